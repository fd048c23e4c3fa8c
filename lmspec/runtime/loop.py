"""The driver: runs one stage through the protocol of `stages.base` — resume from its last good
checkpoint, step, log, evaluate, sample, checkpoint, stop cleanly on Ctrl-C or a non-finite
loss, write its final artifacts. Every stage kind goes through this one loop.

With several processes (`distributed`) every rank runs the loop in step; only rank 0 writes the
stage's files (status, metrics, samples, checkpoints, final/) and evaluates. Rank 0 chooses the
checkpoint to resume from and the others load that one; all ranks agree on stopping (Ctrl-C)
after the same step; the others wait for rank 0's final/ before they read it. A stage whose
model is sharded across the ranks (`stage.sharded`, FSDP) evaluates and samples on every rank
(each forward gathers the weights from all of them), has every rank write its slices of each
checkpoint, and gathers its weights onto rank 0 (`stage.consolidate()`) before final/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from lmspec.runtime import distributed
from lmspec.runtime.checkpoint import (CorruptCheckpoint, fsync_dir, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, save_checkpoint, sha256_file, verify,
                                       write_json_atomic)
from lmspec.runtime.errors import RunError
from lmspec.runtime.rundir import MetricsLog, RunDir
from lmspec.runtime.stages.base import Stage, StageArtifacts

__all__ = ["drive", "Interrupted", "InterruptFlag", "finished_artifacts", "seal", "reset_stage"]


class Interrupted(RunError):
    pass


def _kill_at() -> tuple[str | None, int]:
    """Fault injection for tests (docs/running.md): `LMSPEC_KILL_AT_STEP=N` (any stage) or
    `STAGE:N` SIGKILLs the process right after step N has been logged and, if due,
    checkpointed — a power cut at a known moment. With several processes every rank kills
    itself, or only rank R with `LMSPEC_KILL_RANK=R` (a worker that dies)."""
    value = os.environ.get("LMSPEC_KILL_AT_STEP", "")
    stage, _, step = value.rpartition(":")
    rank = os.environ.get("LMSPEC_KILL_RANK", "")
    if rank.isdigit() and int(rank) != distributed.world().rank:
        return None, 0
    return (stage or None, int(step)) if step.isdigit() else (None, 0)


class InterruptFlag:
    """Ctrl-C sets a flag that the driver reads between steps, so a checkpoint is never written
    from the middle of an update; a second Ctrl-C stops at once. One flag for the whole run:
    a Ctrl-C during a stage's last step stops the run after that stage."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- final artifacts


def seal(directory: Path) -> None:
    """fsync every file of a finished stage's `final/` and record its checksums, so a power cut
    cannot leave a torn weight file behind a `finished` status."""
    sums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        sums[str(path.relative_to(directory))] = sha256_file(path)
    write_json_atomic(directory / "checksums.json", sums)
    fsync_dir(directory)


def finished_artifacts(run: RunDir, stage: str, model: str | None, warn=None) -> StageArtifacts | None:
    """The artifacts of a stage that finished in an earlier session, if they are whole."""
    final = run.path / "stages" / stage / "final"
    if run.stage_status(stage).get("status") != "finished":
        return None
    try:
        verify(final)
    except CorruptCheckpoint as err:
        if warn is not None:
            warn(f"stage {stage}: its final weights are damaged ({err}); running the stage again")
        return None
    try:
        record = json.loads((final / "artifacts.json").read_text())
    except (OSError, ValueError):
        return None
    return StageArtifacts({k: final / v for k, v in record["files"].items()}, record.get("model", model))


def reset_stage(run: RunDir, stage: str) -> None:
    """Forget a stage's progress (its settings changed under --force): it runs again from step 0."""
    sdir = run.path / "stages" / stage
    for name in ("final", "checkpoints"):
        shutil.rmtree(sdir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "samples.jsonl", "status.json"):
        (sdir / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the loop


def _checkpoint(stage: Stage, directory: Path, step: int, seconds: float, tokens: int) -> None:
    """Every rank gives its state (a stage may gather from all of them); rank 0 writes it (every
    rank its slices of a sharded one), and no rank goes on before it is on disk, so a rank that
    dies after step N finds N saved."""
    tensors, state = stage.state_dict()
    save_checkpoint(directory, step, tensors, {"step": step, "seconds": seconds, "tokens": tokens, "stage": state},
                    keep=stage.keep_checkpoints)
    distributed.barrier()


def _resume_point(ckpt_dir: Path, total: int, progress):
    """(path, tensors, state) of the checkpoint to resume from, or None: rank 0 picks it (naming
    the corrupt ones on the way), the other ranks load the one it picked."""
    main = distributed.is_main()
    found = latest_checkpoint(ckpt_dir, warn=progress.message, max_step=total) if main else None
    name = distributed.broadcast_json(found[0].name if found is not None else None)
    if main or name is None:
        return found
    tensors, state = load_checkpoint(ckpt_dir / name, check=False)  # rank 0 has just verified its checksums
    return ckpt_dir / name, tensors, state


def _set_aside(directory: Path, newer_than: int, progress) -> None:
    """Checkpoints after the one a stage resumes from (corrupt, or from settings since changed)
    would outrank the good ones when the newest K are kept: move them to checkpoints/unused/."""
    for path in list_checkpoints(directory):
        if int(path.name[5:]) > newer_than:
            target = directory / "unused" / path.name
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(path, target)
            progress.message(f"stage {directory.parent.name}: set aside checkpoint {path.name} in {target.parent}")


def drive(stage: Stage, run: RunDir, progress, *, interrupt: InterruptFlag, tensorboard=None) -> StageArtifacts:
    """Run `stage` to its last step (or from where its checkpoints left off) and return its artifacts.
    `tensorboard`: what opens the stage's event writer given the step it starts from (api's _TensorBoard)."""
    name = stage.name
    done = finished_artifacts(run, name, stage.plan.model, warn=progress.message)
    if done is not None:
        progress.message(f"stage {name}: finished earlier, reusing its weights")
        return done
    main = distributed.is_main()
    sdir = run.stage_dir(name) if main else run.path / "stages" / name
    ckpt_dir = sdir / "checkpoints"
    stage.setup()
    sharded = stage.sharded  # known after setup (a train stage with parallel: fsdp)
    total = stage.total_steps  # known after setup for some kinds (a feedback stage counts its prompts)
    if stage.plan.arch is not None and main:  # open_run reads it to rebuild the model of an unfinished stage
        from lmspec.compiler.arch import arch_to_dict

        write_json_atomic(sdir / "arch.json", arch_to_dict(stage.plan.arch))
    start, seconds, tokens = 0, 0.0, 0
    found = _resume_point(ckpt_dir, total, progress)
    if found is not None:
        path, tensors, state = found
        stage.load_state_dict(tensors, state["stage"])
        start, seconds, tokens = int(state["step"]), float(state.get("seconds", 0.0)), int(state.get("tokens", 0))
        progress.message(f"stage {name}: resuming from checkpoint {path.name}")
    elif list_checkpoints(ckpt_dir) or run.stage_status(name).get("step", 0):
        progress.message(f"stage {name}: no good checkpoint, starting the stage again from step 0")
    files = _StageFiles(run, name, sdir) if main else _NoFiles()
    if main:
        _set_aside(ckpt_dir, start, progress)
    metrics, samples = files.log("metrics.jsonl", start), files.log("samples.jsonl", start)
    # TensorBoard hides what an earlier session logged after `start`, as metrics.jsonl drops it
    board = tensorboard.open(name, start) if tensorboard is not None and main else None
    files.status("running", step=start, total=total, seconds=seconds, kind=stage.kind,
                 tokenizer=getattr(stage, "tokenizer_name", None), pid=os.getpid(),
                 world_size=distributed.world().size)
    progress.start_stage(name, total, start)
    t_log, tokens_at_log = time.perf_counter(), tokens
    t_stage = time.perf_counter() - seconds
    kill_stage, kill_step = _kill_at()
    step = start
    try:
        for i in range(start, total):
            try:
                record = stage.step(i)
            except RunError:
                files.status("failed", step=i, seconds=time.perf_counter() - t_stage)
                raise
            step = i + 1
            tokens += int(record.pop("tokens", 0))
            evaluate = (stage.eval_every and step % stage.eval_every == 0) or step == total
            logged = step % stage.log_every == 0 or step == total or step == 1 or evaluate
            if logged:
                now = time.perf_counter()
                record["tokens"] = tokens
                record["tokens_per_s"] = (tokens - tokens_at_log) / max(now - t_log, 1e-9)
                if evaluate and (main or sharded):  # replicas are identical: rank 0 evaluates for all
                    try:
                        record.update(stage.evaluate())
                    except RunError:
                        files.status("failed", step=step, seconds=time.perf_counter() - t_stage)
                        raise
                    for s in stage.samples(step):
                        samples.write({"stage": name, "step": step, **s})
                line = {"stage": name, "step": step, **{k: _clean(v) for k, v in record.items()}}
                metrics.write(line)
                if board is not None:
                    for k, v in line.items():
                        if isinstance(v, (int, float)) and k != "step":
                            board.add_scalar(f"{name}/{k}", v, step)
                t_log, tokens_at_log = time.perf_counter(), tokens
            progress.update(step, record, logged=logged)
            stop = distributed.any_rank(interrupt.set)
            if step < total and (stop or (stage.checkpoint_every and step % stage.checkpoint_every == 0)):
                _checkpoint(stage, ckpt_dir, step, time.perf_counter() - t_stage, tokens)
                files.status("running", step=step, seconds=time.perf_counter() - t_stage)
            if step == kill_step and kill_stage in (None, name):
                os.kill(os.getpid(), signal.SIGKILL)
            if stop and step < total:
                files.status("interrupted", step=step, seconds=time.perf_counter() - t_stage)
                raise Interrupted(f"interrupted: stage '{name}' stopped after step {step} of {total}, "
                                  "with a checkpoint of that step",
                                  help=f"resume with `lmspec run --resume {run.path}`")
    finally:
        metrics.close()
        samples.close()
        if board is not None:
            board.close()
        progress.end_stage()
    if sharded:
        stage.consolidate()
    if not main:  # rank 0 writes final/; the stages after this one read it, on every rank
        distributed.barrier()
        done = finished_artifacts(run, name, stage.plan.model)
        if done is None:
            raise RunError(f"stage {name}: rank 0 did not leave whole final artifacts in {sdir / 'final'}")
        return done
    artifacts = _finish(stage, run, sdir, total, tokens, time.perf_counter() - t_stage, progress)
    distributed.barrier()
    return artifacts


def _finish(stage: Stage, run: RunDir, sdir: Path, total: int, tokens: int, elapsed: float, progress) -> StageArtifacts:
    """Write and seal the stage's final/ directory, mark it finished, draw its plots."""
    name = stage.name
    tmp = sdir / "final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    artifacts = stage.artifacts(tmp)
    write_json_atomic(tmp / "artifacts.json", {"files": {k: p.name for k, p in artifacts.files.items()},
                                               "model": artifacts.model, "kind": stage.kind})
    seal(tmp)
    final = sdir / "final"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(sdir)
    run.set_stage_status(name, "finished", step=total, total=total, seconds=elapsed, tokens=tokens)
    from lmspec.runtime.plots import plot_losses, plot_rl

    try:
        plot_losses(run.metrics(name), sdir / "loss.png", f"{name}")
        if stage.kind == "rl":
            plot_rl(run.metrics(name), sdir / "rl.png", f"{name}: reward and KL")
    except (OSError, ValueError) as err:  # a plot is never worth a failed run
        progress.message(f"stage {name}: could not draw its plots ({err})")
    return artifacts.moved_to(final)


class _StageFiles:
    """Rank 0's view of a stage's files: its status and its JSON-lines logs."""

    def __init__(self, run: RunDir, name: str, sdir: Path):
        self.run, self.name, self.sdir = run, name, sdir

    def log(self, filename: str, start: int) -> MetricsLog:
        log = MetricsLog(self.sdir / filename)
        log.truncate_after(start)
        return log

    def status(self, status: str, **extra) -> None:
        self.run.set_stage_status(self.name, status, **extra)


class _NoFiles:
    """The other ranks' view: they write nothing."""

    class _Log:
        def write(self, record: dict) -> None:
            pass

        def close(self) -> None:
            pass

    def log(self, filename: str, start: int) -> "_NoFiles._Log":
        return self._Log()

    def status(self, status: str, **extra) -> None:
        pass


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; null keeps the line readable by every parser
    return v

