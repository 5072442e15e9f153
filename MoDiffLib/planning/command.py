"""The ``modiff plan`` command line, for callers that run it as a background process.

The Slicer module runs the planning as ``python -m MoDiffLib plan ... --progress json`` (see
:mod:`MoDiffLib.process_runner` for the progress protocol). The command itself lives in
:mod:`MoDiffLib.commands.plan`; this module only spells its arguments, so a GUI can build the
command line without importing a command module.
"""

from __future__ import annotations

import os
from typing import Sequence


def _point(p: Sequence[float]) -> str:
    return ",".join(repr(float(c)) for c in p)


def plan_command(cine_path: str | os.PathLike, out_dir: str | os.PathLike, entry_ras: Sequence[float],
                 target_ras: Sequence[float], risk_path: str | os.PathLike | None = None,
                 risk_names_path: str | os.PathLike | None = None, margin_mm: float | None = None,
                 tolerance_mm: float | None = None, save_motion: bool = True, python: str | None = None) -> list[str]:
    """The ``modiff plan CINE --entry=R,A,S --target=R,A,S --out DIR ... --progress json`` command line.

    Points are RAS millimetres on frame 0, written as ``--entry=R,A,S`` (safe for a negative first
    value). Options left as ``None`` are not passed, so the command's defaults apply. ``python``:
    the interpreter (default: :func:`~MoDiffLib.process_runner.python_executable`, PythonSlicer in
    Slicer).
    """
    from ..process_runner import python_executable

    command = [python or python_executable(), "-m", "MoDiffLib", "plan", os.fspath(cine_path),
               f"--entry={_point(entry_ras)}", f"--target={_point(target_ras)}", "--out", os.fspath(out_dir)]
    if risk_path is not None:
        command += ["--risk", os.fspath(risk_path)]
    if risk_names_path is not None:
        command += ["--risk-names", os.fspath(risk_names_path)]
    if margin_mm is not None:
        command += ["--margin", repr(float(margin_mm))]
    if tolerance_mm is not None:
        command += ["--tolerance", repr(float(tolerance_mm))]
    if save_motion:
        command += ["--save-motion"]
    command += ["--progress", "json"]
    return command
