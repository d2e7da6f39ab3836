"""What the ContrastiveSeg Slicer module needs from the library, kept out of the (thin) module file.

- :mod:`.geometry`  RAS/IJK matrices <-> ITK spacing/origin/direction (numpy only).
- :mod:`.nodes`     MRML volume/segmentation nodes <-> arrays; the only code that touches MRML nodes.
- :mod:`.runner`    the CLI in a child process: JSON progress lines, cancel that kills the process tree.
- :mod:`.childrun`  what every run shares: one CLI child, polled, cancelled as a tree.
- :mod:`.job`       one Segment / Predict run: nodes -> exchange files -> runner -> segments.
- :mod:`.pretraining`  one Pretrain run (:class:`~.pretraining.PretrainRun`): the scene's scans (or a folder)
  -> runner -> an encoder file.
- :mod:`.uncertainty`  "Suggest next slice" from the probability file.
- :mod:`.scoring`   the uncertainty scored in a worker process (slice scores, entropy map), never on the GUI thread.
- :mod:`.exchange`  the exchange files written fast (raw NRRD straight from a node's memory).
- :mod:`.driver`    :class:`~.driver.RunDriver`: a run followed from a GUI timer; every way it ends reaches the panel.
- :mod:`.panel`     what the panel listens to and shows (events, shortcuts, path fields, summary text), no Qt.
- :mod:`.sample`    the bundled sample with 3 painted slices, registered in Slicer's Sample Data.
- :mod:`.environment`  which packages are missing, GPUs seen by the driver (no torch import).
- :mod:`.requirements` the Python packages the module needs, stated once (imports nothing).

Importing this package imports nothing heavy; :mod:`.nodes`, :mod:`.job`, :mod:`.pretraining` and :mod:`.sample`
need Slicer or the slicer-core wheel. Nothing here imports Qt: the browser front end drives the same runs.
"""
