"""What the ContrastiveSeg Slicer module needs from the library, kept out of the (thin) module file.

- :mod:`.geometry`  RAS/IJK matrices <-> ITK spacing/origin/direction (numpy only).
- :mod:`.nodes`     MRML volume/segmentation nodes <-> arrays; the only code that touches MRML nodes.
- :mod:`.runner`    the CLI in a child process: JSON progress lines, cancel that kills the process tree.
- :mod:`.childrun`  what every run shares: one CLI child, polled, cancelled as a tree.
- :mod:`.job`       one Segment / Predict run: nodes -> exchange files -> runner -> segments.
- :mod:`.pretraining`  one Pretrain run (:class:`~.pretraining.PretrainRun`): the scene's scans (or a folder)
  -> runner -> an encoder file.
- :mod:`.uncertainty`  "Suggest next slice" from the probability file.
- :mod:`.environment`  which packages are missing, GPUs seen by the driver (no torch import).
- :mod:`.requirements` the Python packages the module needs, stated once (imports nothing).

Importing this package imports nothing heavy; :mod:`.nodes`, :mod:`.job` and :mod:`.pretraining` need Slicer or
the slicer-core wheel.
"""
