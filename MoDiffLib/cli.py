"""The ``modiff`` command line.

Each subcommand lives in its own module under :mod:`MoDiffLib.commands` and provides
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch,
SimpleITK) happen inside ``run`` so that ``modiff --help`` is instant.

User errors (:class:`~MoDiffLib.errors.MoDiffError`) print one line, ``modiff: error: ...``,
and exit with status 2; a cancel (Ctrl-C) exits with 130 and leaves no partial output.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import Cancelled, MoDiffError

#: Subcommand modules, in the order ``modiff --help`` lists them.
COMMANDS = ["phantom", "generate", "plan", "evaluate", "demo", "bench", "models"]


def _load_commands() -> list:
    modules = []
    for name in COMMANDS:
        try:
            modules.append(importlib.import_module(f"{__package__}.commands.{name}"))
        except ModuleNotFoundError as exc:
            # A command whose module is not part of this build is simply not offered.
            if exc.name != f"{__package__}.commands.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modiff",
        description="MoDiff: synthesise a 4D cine of respiratory or cardiac motion from one 3D volume.",
    )
    parser.add_argument("--version", action="version", version=f"modiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _load_commands():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Cancelled as exc:
        print(f"modiff: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("modiff: cancelled by the user; no output was written", file=sys.stderr)
        return 130
    except MoDiffError as exc:
        print(f"modiff: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
