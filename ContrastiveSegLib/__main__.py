"""``python -m ContrastiveSegLib ...`` is the same as ``contrastiveseg ...`` (and what torchrun launches)."""
import sys

from ContrastiveSegLib.signals import hold_early_signals

hold_early_signals()  # before the imports below: a Ctrl-C during start-up is a cancel, not a traceback

from ContrastiveSegLib.cli import run  # noqa: E402

sys.exit(run())
