"""``contrastiveseg web``: its arguments and its start, without importing trame until it runs."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.web import DEFAULT_HOST, DEFAULT_PORT

DEFAULT_OUTPUT = Path("contrastiveseg-web")
"""Where Save writes, relative to the folder the server was started in."""


def add_web_parser(sub) -> None:
    """Add the ``web`` subcommand to the CLI's subparsers."""
    web = sub.add_parser("web", help="open the browser front end: paint, Segment and save in a web page served "
                         "from this machine (needs: pip install 'contrastiveseg[web]')")
    web.add_argument("scans", nargs="*", type=Path, metavar="SCAN",
                     help="scan files or folders the page may open (the first scan file is opened at start); "
                          "the bundled sample is always offered")
    web.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    web.add_argument("--host", default=DEFAULT_HOST,
                     help=f"address to listen on (default {DEFAULT_HOST}: this machine only; reach it from a "
                          "workstation through an SSH tunnel)")
    web.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                     help=f"folder where Save writes the segmentation and model (default ./{DEFAULT_OUTPUT})")


def run_web(args: argparse.Namespace) -> int:
    """Check the arguments (one line, exit 2), then serve until Ctrl-C."""
    missing = [name for name in ("trame_slicer", "trame_vuetify") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"the browser front end needs the 'web' extra ({', '.join(missing)} missing): "
                         "pip install 'contrastiveseg[web]'")
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    from ContrastiveSegLib.web.scans import ScanFolders

    ScanFolders(args.scans)  # a missing scan or folder is one line before anything starts
    from ContrastiveSegLib.web.app import serve

    return serve([str(p) for p in args.scans], host=args.host, port=args.port, output_dir=args.output)
