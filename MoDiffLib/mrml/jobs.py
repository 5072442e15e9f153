"""Background runs of the ``modiff`` commands for a Slicer scene: one job class for generate and plan.

A :class:`SceneJob` is a command line, the temporary folder that holds its inputs and outputs,
and what to load into the scene when the command has finished. :func:`generate_job` and
:func:`plan_job` make one from a checked request (:mod:`MoDiffLib.mrml.requests`): they write
the input nodes to the folder and spell the command; :meth:`SceneJob.start` runs it as a child
process (:class:`~MoDiffLib.process_runner.ProcessRunner`), :meth:`SceneJob.poll` follows it
without blocking (for a GUI timer), :meth:`SceneJob.finish` loads the outputs into the scene.

The scene is not touched before :meth:`~SceneJob.finish`, and the folder is removed whatever
happens, so a cancelled or failed job leaves the scene as it was. A generation whose device was
left to ``auto`` that runs out of GPU memory is run again on the CPU, with a notice: the GPU
was ``auto``'s choice, not the user's, and the CPU works in system memory (slower). A device the
user chose (``cuda``) is not changed; that run fails with the out-of-memory error.

No Qt here: the jobs run the same way under pytest (``slicer-core``) and in the Slicer module.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError, OutputError
from ..process_runner import ProcessRunner, child_environment, generate_command
from .requests import GenerateRequest, PlanRequest

#: What torch (CUDA caching allocator, cuBLAS) prints when the GPU has no memory left.
_GPU_OUT_OF_MEMORY = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|"
                                r"GPU (?:ran|is) out of memory", re.IGNORECASE)
#: The notice of a run moved to the CPU.
CPU_FALLBACK_NOTICE = "the GPU ran out of memory; running on the CPU instead (slower)"
#: Seconds between polls of :meth:`SceneJob.wait`.
_WAIT_POLL_S = 0.05


def gpu_out_of_memory(stderr: str) -> bool:
    """Whether a failed run's stderr says that the GPU ran out of memory."""
    return bool(_GPU_OUT_OF_MEMORY.search(stderr or ""))


def _log(stream: str, line: str) -> None:
    (logging.warning if stream == "stderr" else logging.info)(f"modiff: {line}")


@dataclass(eq=False)
class SceneJob:
    """One background run of a ``modiff`` command for a scene.

    Attributes:
        what: ``"generation"`` or ``"planning"`` (for messages).
        command: the command line (no shell).
        folder: temporary folder of the command's inputs and outputs, removed when the job ends.
        outputs: the paths the command writes, by role (``"cine"``, ``"plan"``, ``"motion"``).
        load: ``load(job, done_event)`` turns the outputs into scene nodes and returns them; it
            runs in :meth:`finish`, the first time anything of the scene is touched.
        cpu_fallback: run the command again with ``--device cpu`` if it ran out of GPU memory.
        notices: what the user should know about how the job ran (e.g. the move to the CPU).
        runner: the process of the current attempt (``None`` before :meth:`start`).
        loaded: what ``load`` added to the scene besides its return value, by role (e.g. the
            ``labels`` :class:`~MoDiffLib.mrml.labels.LabelNodes` of a generation with labels).
    """

    what: str
    command: list[str]
    folder: Path
    outputs: dict[str, Path]
    load: Callable[["SceneJob", dict | None], Any]
    cpu_fallback: bool = False
    notices: list[str] = field(default_factory=list)
    runner: ProcessRunner | None = field(default=None, init=False)
    loaded: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._callbacks: dict[str, Callable | None] = {}
        self._over = False  # finished or discarded: the folder is gone (or goes with the process)

    # -- running ------------------------------------------------------------------------------------
    def start(self, on_event: Callable[[dict], None] | None = None, on_log: Callable[[str, str], None] | None = None,
              on_notice: Callable[[str], None] | None = None) -> "SceneJob":
        """Start the command; returns ``self``. ``on_event`` receives its JSON progress events,
        ``on_log`` its other output lines, ``on_notice`` each notice (in the thread that polls)."""
        if self.runner is not None or self._over:
            raise RuntimeError(f"this {self.what} job was already started")
        self._callbacks = {"event": on_event, "log": on_log or _log, "notice": on_notice}
        self._launch(self.command)
        return self

    def _launch(self, command: list[str]) -> None:
        logging.info("MoDiff: running " + " ".join(command))
        runner = ProcessRunner(command, on_event=self._callbacks["event"], on_log=self._callbacks["log"],
                               env=child_environment())
        try:
            runner.start()
        except BaseException:
            self.discard()
            raise
        self.runner = runner

    def _falls_back_to_cpu(self) -> bool:
        runner = self.runner
        return (self.cpu_fallback and not runner.cancelled and runner.returncode not in (0, None)
                and "--device" in self.command and gpu_out_of_memory(runner.stderr_text))

    def _restart_on_cpu(self) -> None:
        command = list(self.command)
        command[command.index("--device") + 1] = "cpu"
        self.command, self.cpu_fallback = command, False
        self.notices.append(CPU_FALLBACK_NOTICE)
        logging.warning(f"MoDiff: {CPU_FALLBACK_NOTICE}")
        if self._callbacks.get("notice") is not None:
            self._callbacks["notice"](CPU_FALLBACK_NOTICE)
        self._launch(command)

    @property
    def running(self) -> bool:
        """Started and not yet finished or discarded."""
        return self.runner is not None and not self._over

    def poll(self) -> bool:
        """Deliver the output so far without blocking; True when the command is over (safe from a Qt timer)."""
        if self.runner is None:
            raise RuntimeError(f"this {self.what} job was not started")
        if self._over:
            return True
        if not self.runner.poll():
            return False
        if self._falls_back_to_cpu():
            self._restart_on_cpu()
            return False
        return True

    def wait(self) -> None:
        """Block until the command is over (including a move to the CPU)."""
        while not self.poll():
            time.sleep(_WAIT_POLL_S)

    def cancel(self) -> None:
        """Ask the command to stop (returns at once); :meth:`finish` then raises Cancelled."""
        if self.runner is not None:
            self.runner.cancel()

    @property
    def elapsed_s(self) -> float:
        return self.runner.elapsed_s if self.runner is not None else 0.0

    # -- ending ---------------------------------------------------------------------------------------
    def finish(self) -> Any:
        """Wait for the command (at once if it is over), then load its outputs into the scene;
        returns what ``load`` returns. The folder is removed whatever happens; an interrupt while
        waiting (Ctrl-C in the Python console) stops the command and discards the job.

        Raises:
            Cancelled: the job was cancelled. ProcessFailedError: the command failed (the message
            is its ``modiff: error:`` line). InputError/OutputError: the outputs cannot be used.
        """
        if self.runner is None:
            raise RuntimeError(f"this {self.what} job was not started")
        if self._over:
            raise RuntimeError(f"this {self.what} job was already finished")
        try:
            self.wait()
        except BaseException:
            self.cancel()
            self.discard()
            raise
        try:
            return self.load(self, self.runner.result())
        finally:
            self._over = True
            shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        """Stop the command and forget the job; nothing is loaded. Returns at once (a GUI must not
        wait for a child that is cleaning up): the folder goes when the process tree is gone."""
        self._over = True
        folder = self.folder
        if self.runner is not None and self.runner.running:
            self.runner.stop(on_finished=lambda: shutil.rmtree(folder, ignore_errors=True))
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _job_folder(prefix: str, temp_root: str | Path | None) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=None if temp_root is None else str(temp_root)))


# -- generation -------------------------------------------------------------------------------------
def generate_job(request: GenerateRequest, temp_root: str | Path | None = None, python: str | None = None) -> SceneJob:
    """A job that runs ``modiff generate`` on the request's volume and adds the cine to its scene.

    The input node is written to ``input.nrrd`` in a new folder under ``temp_root`` (default: the
    system's temporary folder), the request's labels (if any) to ``labels-in.nrrd``, its
    breathing trace to ``trace.csv``, its end frame to ``end.nrrd`` and its known frames to
    ``known-<t>.nrrd`` (frame ``t``);
    :meth:`SceneJob.finish` returns the cine's sequence node, and with labels
    ``job.loaded["labels"]`` holds their :class:`~MoDiffLib.mrml.labels.LabelNodes`.
    """
    from ..io import write_volume
    from .volumes import write_volume_node

    folder = _job_folder("MoDiff-", temp_root)
    try:
        input_path = write_volume_node(request.volume_node, folder / "input.nrrd")
        cine = folder / "cine.seq.nrrd"
        outputs = {"cine": cine}
        labels_in = None
        if request.labels is not None:
            labels_in = write_volume(request.labels.volume, folder / "labels-in.nrrd")
            outputs["labels"] = folder / "labels.seq.nrrd"
        trace = None
        if request.trace_csv is not None:
            trace = folder / "trace.csv"
            trace.write_text(request.trace_csv, encoding="utf-8")
        end = None if request.end is None else write_volume(request.end, folder / "end.nrrd")
        known = None
        if request.known is not None:
            known = {t: write_volume(volume, folder / f"known-{t}.nrrd") for t, volume in request.known.items()}
        command = generate_command(input_path, cine, request.frames, model=request.model, steps=request.steps,
                                   seed=request.seed, amplitude=request.amplitude, device=request.device, python=python,
                                   labels_path=labels_in, labels_out=outputs.get("labels"), trace_path=trace,
                                   end_path=end, known_paths=known)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return SceneJob("generation", command, folder, outputs, lambda job, done: _load_cine(request, job, done),
                    cpu_fallback=request.device == "auto")


def _load_cine(request: GenerateRequest, job: SceneJob, done: dict | None):
    from ..io import read_sequence
    from .cine import build_cine

    output = Path(str((done or {}).get("output") or job.outputs["cine"]))
    if not output.is_file():
        raise OutputError("the generator finished without writing a cine")
    sequence = read_sequence(output)
    provenance = request.provenance()
    provenance.update((done or {}).get("provenance") or {})  # what actually ran wins
    provenance.setdefault("elapsed_seconds", round(job.elapsed_s, 2))
    if job.notices:
        provenance["notices"] = list(job.notices)
    if request.volume_node.GetScene() is None:
        raise InputError("the input volume was removed from the scene while the cine was generated")
    labels = None
    if request.labels is not None:
        path = job.outputs["labels"]
        if not path.is_file():
            raise OutputError("the generator finished without writing the labels of the frames")
        labels = read_sequence(path)
    sequence_node, browser = build_cine(request.scene, sequence, request.volume_node, provenance,
                                        request.output_sequence)
    if labels is not None:
        from .labels import show_labels

        job.loaded["labels"] = show_labels(request.scene, browser, labels, request.labels)
    return sequence_node


# -- planning ---------------------------------------------------------------------------------------
def plan_job(request: PlanRequest, temp_root: str | Path | None = None, python: str | None = None) -> SceneJob:
    """A job that runs ``modiff plan`` on the request's cine and shows the plan's overlays.

    The cine (and the risk label map with its names) are written to a new folder under
    ``temp_root``; :meth:`SceneJob.finish` returns ``(PlanNodes, PuncturePlan)``.
    """
    from ..io import write_volume
    from ..planning.command import plan_command
    from .cine import save_cine

    folder = _job_folder("MoDiff-plan-", temp_root)
    try:
        cine_path = save_cine(request.cine_node, folder / "cine.seq.nrrd")
        risk_path = names_path = None
        if request.risk is not None:
            risk_path = write_volume(request.risk, folder / "risk.nrrd")
            if request.risk_names:
                names_path = folder / "risk_names.json"
                names_path.write_text(json.dumps({str(k): v for k, v in request.risk_names.items()}), encoding="utf-8")
        out = folder / "plan"
        command = plan_command(cine_path, out, request.entry_ras, request.target_ras, risk_path, names_path,
                               request.margin_mm, request.tolerance_mm, python=python)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    outputs = {"plan": out / "plan.json", "motion": out / "motion.seq.nrrd"}
    return SceneJob("planning", command, folder, outputs, lambda job, done: _load_plan(request, job))


def _load_plan(request: PlanRequest, job: SceneJob):
    from ..io import read_sequence
    from ..motion import MotionFields
    from ..planning import PuncturePlan
    from .planning import show_plan

    plan_path, motion_path = job.outputs["plan"], job.outputs["motion"]
    if not plan_path.is_file():
        raise OutputError("the planning finished without writing plan.json")
    plan = PuncturePlan.from_dict(json.loads(plan_path.read_text(encoding="utf-8")))
    fields = MotionFields.from_sequence(read_sequence(motion_path)) if motion_path.is_file() else None
    if request.browser.GetScene() is None:
        raise InputError("the cine was removed from the scene while the plan was computed")
    return show_plan(request.scene, plan, request.browser, fields), plan
