"""What both entry scripts share: the common arguments and the error boundary.

A :class:`~utils.errors.UserError` anywhere below ``main`` becomes one line on stderr and exit status 2;
Ctrl-C becomes exit status 130 without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from utils.errors import UserError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, metavar="FILE", help="experiment file (see experiments/)")
    parser.add_argument("--gpu", type=int, default=None, metavar="N", help="run on cuda:N (default: the CPU)")
    parser.add_argument("--visdom", action="store_true", help="plot live curves to the visdom server in the config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted name, e.g. --set data.root=/data "
                             "--set 'data.mean=[0.5,0.5,0.5]' (the value is read as JSON when it parses)")


def run_main(main: Callable[[], int | None]) -> None:
    """Call ``main`` and turn user errors into one clear line and a non-zero exit."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
