"""ContrastiveSegLib: segment a whole 3D volume from a few annotated slices.

The public entry points live in :mod:`ContrastiveSegLib.api`; the command line in :mod:`ContrastiveSegLib.cli`.
Importing the package is cheap: torch and MONAI load only when a pipeline step needs them.
"""

__version__ = "0.1.0"
