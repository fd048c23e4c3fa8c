"""The driver: runs one stage through the protocol of `stages.base` — resume from its last good
checkpoint, step, log, evaluate, sample, checkpoint, stop cleanly on Ctrl-C or a non-finite
loss, write its final artifacts. Every stage kind goes through this one loop."""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from lmspec.runtime.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint, write_json_atomic
from lmspec.runtime.errors import RunError
from lmspec.runtime.rundir import MetricsLog, RunDir
from lmspec.runtime.stages.base import Stage, StageArtifacts

__all__ = ["drive", "Interrupted", "finished_artifacts"]


class Interrupted(RunError):
    pass


# Fault injection for tests (docs/running.md): `LMSPEC_KILL_AT_STEP=N` SIGKILLs the process right
# after step N of a stage has been logged and, if due, checkpointed — a power cut at a known moment.
_KILL_AT = int(os.environ.get("LMSPEC_KILL_AT_STEP", "0") or 0)


class _InterruptFlag:
    """Ctrl-C sets a flag that the loop reads between steps, so a checkpoint is never written
    from the middle of an update; a second Ctrl-C stops at once."""

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


def finished_artifacts(run: RunDir, stage: str, model: str | None) -> StageArtifacts | None:
    final = run.path / "stages" / stage / "final"
    if run.stage_status(stage).get("status") == "finished" and (final / "model.safetensors").is_file():
        return StageArtifacts(final / "model.safetensors", final / "tokenizer", model)
    return None


def _checkpoint(stage: Stage, directory: Path, step: int, seconds: float) -> Path:
    tensors, state = stage.state_dict()
    return save_checkpoint(directory, step, tensors, {"step": step, "seconds": seconds, "stage": state},
                           keep=stage.keep_checkpoints)


def drive(stage: Stage, run: RunDir, progress, *, tensorboard=None) -> StageArtifacts:
    """Run `stage` to its last step (or from where its checkpoints left off) and return its artifacts."""
    name = stage.name
    done = finished_artifacts(run, name, stage.plan.model)
    if done is not None:
        progress.message(f"stage {name}: finished earlier, reusing its weights")
        return done
    sdir = run.stage_dir(name)
    ckpt_dir = sdir / "checkpoints"
    stage.setup()
    if stage.plan.arch is not None:  # open_run reads it to rebuild the model of an unfinished stage
        from lmspec.compiler.arch import arch_to_dict

        write_json_atomic(sdir / "arch.json", arch_to_dict(stage.plan.arch))
    start, seconds = 0, 0.0
    found = latest_checkpoint(ckpt_dir, warn=progress.message)
    if found is not None:
        path, tensors, state = found
        stage.load_state_dict(tensors, state["stage"])
        start, seconds = int(state["step"]), float(state.get("seconds", 0.0))
        progress.message(f"stage {name}: resuming from checkpoint {path.name}")
    elif list_checkpoints(ckpt_dir) or run.stage_status(name).get("step", 0):
        progress.message(f"stage {name}: no good checkpoint, starting the stage again from step 0")
    metrics, samples = MetricsLog(sdir / "metrics.jsonl"), MetricsLog(sdir / "samples.jsonl")
    metrics.truncate_after(start)
    samples.truncate_after(start)
    total = stage.total_steps
    run.set_stage_status(name, "running", step=start, total=total, seconds=seconds, kind=stage.kind,
                         tokenizer=getattr(stage, "tokenizer_name", None))
    progress.start_stage(name, total, start)
    tokens = _tokens_so_far(run.metrics(name))
    t_log, tokens_at_log = time.perf_counter(), tokens
    t_stage = time.perf_counter() - seconds
    step = start
    try:
        with _InterruptFlag() as interrupt:
            for i in range(start, total):
                try:
                    record = stage.step(i)
                except RunError:
                    run.set_stage_status(name, "failed", step=i, seconds=time.perf_counter() - t_stage)
                    raise
                step = i + 1
                tokens += int(record.pop("tokens", 0))
                evaluate = (stage.eval_every and step % stage.eval_every == 0) or step == total
                logged = step % stage.log_every == 0 or step == total or step == 1 or evaluate
                if logged:
                    now = time.perf_counter()
                    record["tokens"] = tokens
                    record["tokens_per_s"] = (tokens - tokens_at_log) / max(now - t_log, 1e-9)
                    if evaluate:
                        record.update(stage.evaluate())
                        for s in stage.samples(step):
                            samples.write({"stage": name, "step": step, **s})
                    line = {"stage": name, "step": step, **{k: _clean(v) for k, v in record.items()}}
                    metrics.write(line)
                    if tensorboard is not None:
                        for k, v in line.items():
                            if isinstance(v, (int, float)) and k != "step":
                                tensorboard.add_scalar(f"{name}/{k}", v, step)
                    t_log, tokens_at_log = time.perf_counter(), tokens
                progress.update(step, record, logged=logged)
                stop = interrupt.set
                if step < total and (stop or (stage.checkpoint_every and step % stage.checkpoint_every == 0)):
                    _checkpoint(stage, ckpt_dir, step, time.perf_counter() - t_stage)
                    run.set_stage_status(name, "running", step=step, seconds=time.perf_counter() - t_stage)
                if _KILL_AT == step:  # fault injection for the resume tests: die as SIGKILL would
                    os.kill(os.getpid(), signal.SIGKILL)
                if stop and step < total:
                    run.set_stage_status(name, "interrupted", step=step, seconds=time.perf_counter() - t_stage)
                    raise Interrupted(f"interrupted: stage '{name}' stopped after step {step} of {total}, "
                                      "with a checkpoint of that step",
                                      help=f"resume with `lmspec run --resume {run.path}`")
    finally:
        metrics.close()
        samples.close()
        progress.end_stage()
    tmp = sdir / "final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    artifacts = stage.artifacts(tmp)
    final = sdir / "final"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    elapsed = time.perf_counter() - t_stage
    run.set_stage_status(name, "finished", step=total, total=total, seconds=elapsed)
    from lmspec.runtime.plots import plot_losses

    plot_losses(run.metrics(name), sdir / "loss.png", f"{name}")
    return StageArtifacts(final / artifacts.weights.name, final / artifacts.tokenizer.name if artifacts.tokenizer else None,
                          artifacts.model)


def _tokens_so_far(lines: list[dict]) -> int:
    with_tokens = [m["tokens"] for m in lines if "tokens" in m]
    return int(with_tokens[-1]) if with_tokens else 0


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN; keep the line readable by every parser
    return v
