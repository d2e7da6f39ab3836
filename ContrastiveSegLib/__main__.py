"""``python -m ContrastiveSegLib ...`` is the same as ``contrastiveseg ...`` (and what torchrun launches)."""
import sys

from ContrastiveSegLib.cli import main

sys.exit(main())
