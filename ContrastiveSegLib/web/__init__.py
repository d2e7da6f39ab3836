"""The browser front end (``contrastiveseg web``): Slicer's scene, views and Segment Editor served by trame-slicer.

- :mod:`.scans`        which files a page may open (only inside the folders the server was given) and uploads
  (bounded, checked like any input, nothing half-written). No trame, no MRML.
- :mod:`.session`      one user's work on an MRML scene: load a scan, paint, Segment / Predict in the worker child
  process, save. Reads annotations and writes results only through :mod:`ContrastiveSegLib.slicer` (the bridge
  the Slicer module uses too); no trame, so it is tested against the ``slicer-core`` wheel.
- :mod:`.workarounds`  trame-slicer behaviour this product needs changed, each with a test that fails once
  upstream fixes it.
- :mod:`.app`          the trame page: thin widgets that gather inputs and call the session.

Importing this package imports nothing heavy; :mod:`.app` needs the ``web`` extra (``pip install ".[web]"``).
"""
from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
"""Only this machine can reach the page unless ``--host`` says otherwise (then a warning is printed)."""
DEFAULT_PORT = 8080
MAX_UPLOAD_BYTES = 1 << 30
"""The largest scan a page may upload (1 GiB): a CT series in one compressed file is far smaller."""
