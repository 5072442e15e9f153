"""The ``modiff`` command line.

Each subcommand lives in its own module under :mod:`MoDiffLib.commands` and provides
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch,
SimpleITK) happen inside ``run`` so that ``modiff --help`` is instant.

User errors (:class:`~MoDiffLib.errors.MoDiffError`) and unusable arguments (a non-number where
a number belongs, an unknown option, a missing one, a seed out of range) print one line,
``modiff: error: ...``, and exit with status 2. A cancel (SIGTERM, as the Slicer module sends,
or Ctrl-C) sets the process's cancel state (:func:`MoDiffLib.atomic.cancel_on_signals`): from
then on no output is moved into place, temporaries are removed, the command prints one line
``modiff: cancelled ...`` (and no ``done`` event) and exits with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from . import __version__
from .atomic import cancel_on_signals
from .errors import Cancelled, MoDiffError

#: Subcommand modules, in the order ``modiff --help`` lists them.
COMMANDS = ["phantom", "generate", "plan", "evaluate", "demo", "bench", "models"]

#: The seed range of :func:`MoDiffLib.pipeline.check_seed` (0..2**32 - 1), repeated rather than
#: imported because that module loads torch and ``modiff --help`` must stay instant.
MAX_SEED = 2**32 - 1


class ModiffArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``modiff: error: ...``, with exit status 2.

    argparse would print the whole usage before its message; the command line reports every user
    error in the same one-line form, which the Slicer module and scripts can show as it is.
    """

    def error(self, message: str) -> NoReturn:
        # self.prog is "modiff" or "modiff <command>": point at the help that lists the options.
        self.exit(2, f"modiff: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """``text`` with its line breaks folded into spaces: a message quoting a file's content or an
    OS error must still be the one line that callers (the Slicer module, scripts) read."""
    return " ".join(str(text).splitlines())


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
    parser = ModiffArgumentParser(
        prog="modiff",
        description="MoDiff: synthesise a 4D cine of respiratory or cardiac motion from one 3D volume.",
    )
    parser.add_argument("--version", action="version", version=f"modiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _load_commands():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def check_common_arguments(args: argparse.Namespace) -> None:
    """Refuse, as argument errors, values that every command shares the meaning of: a ``--seed``
    outside 0..2**32 - 1 (which the generators would otherwise wrap or reject with a traceback)."""
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        args._parser.error(f"argument --seed: must be an integer from 0 to {MAX_SEED}, got {seed}")


def main(argv: list[str] | None = None) -> int:
    """Run ``modiff`` with ``argv`` (default: the process's); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(args)
    # Installed here, once, for every command: SIGTERM/SIGINT set the cancel state that the
    # atomic writers check before publishing (and stop work that does not poll it).
    with cancel_on_signals():
        try:
            return int(args._run(args) or 0)
        except Cancelled as exc:
            print(f"modiff: cancelled: {one_line(exc)}", file=sys.stderr)
            return 130
        except KeyboardInterrupt as exc:
            # Ctrl-C in a terminal, or a signal stopping work that does not poll the cancel state.
            reason = f": {one_line(exc)}" if str(exc) else " by the user"
            print(f"modiff: cancelled{reason}; no output was written", file=sys.stderr)
            return 130
        except MoDiffError as exc:
            print(f"modiff: error: {one_line(exc)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
