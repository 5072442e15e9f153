"""The ``modiff`` command line.

Each subcommand lives in its own module under :mod:`MoDiffLib.commands` and provides
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch,
SimpleITK) happen inside ``run`` so that ``modiff --help`` is instant.

User errors (:class:`~MoDiffLib.errors.MoDiffError`) and unusable arguments (a non-number where
a number belongs, an unknown option, a missing one, a seed out of range) print one line,
``modiff: error: ...``, and exit with status 2. A cancel (SIGTERM, as the Slicer module sends,
or Ctrl-C) sets the process's cancel state (:func:`MoDiffLib.atomic.cancel_on_signals`): from
then on no output is moved into place, temporaries are removed, the command prints one line
``modiff: cancelled ...`` (and no ``done`` event) and exits with status 130. Exit status 130
means that nothing of the run was published; a cancel that arrives after a command published its
outputs (they are complete) is reported by a warning and does not change the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from . import __version__
from .atomic import cancel_on_signals, cancel_reason, cancel_requested, published_outputs
from .errors import Cancelled, MoDiffError

#: Subcommand modules, in the order ``modiff --help`` lists them.
COMMANDS = ["phantom", "generate", "plan", "evaluate", "demo", "view", "bench", "models"]

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
    # The handlers come first, before the parser imports the command modules: from here on
    # SIGTERM/SIGINT set the cancel state that the output units check before publishing (and stop
    # work that does not poll it). Before this line nothing can have been written: a signal then
    # ends the process by that signal (exit status -15 / 143), with no output and no temporary.
    try:
        with cancel_on_signals():
            try:
                status = _run(argv)
            except (MoDiffError, KeyboardInterrupt) as exc:
                return _failure(exc)
            if cancel_requested() and published_outputs():
                # Too late to take back: the outputs are complete, and are kept (exit status as is).
                shown = ", ".join(f"'{p}'" for p in published_outputs())
                print(f"modiff: warning: {cancel_reason()} after {shown} had been written; kept", file=sys.stderr)
            return status
    except KeyboardInterrupt as exc:
        # A signal that was pending (held while the process started) arrived as the handlers were
        # installed, before the command began.
        return _failure(exc)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(args)
    return int(args._run(args) or 0)


def _failure(exc: BaseException) -> int:
    """Print the one line for a failed or cancelled command; return its exit status."""
    if isinstance(exc, Cancelled):
        print(f"modiff: cancelled: {one_line(exc)}", file=sys.stderr)
        return 130
    if isinstance(exc, KeyboardInterrupt):
        # Ctrl-C in a terminal, or a signal stopping work that does not poll the cancel state (it
        # never comes after the command published its outputs).
        reason = f": {one_line(exc)}" if str(exc) else " by the user"
        print(f"modiff: cancelled{reason}; no output was written", file=sys.stderr)
        return 130
    print(f"modiff: error: {one_line(exc)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
