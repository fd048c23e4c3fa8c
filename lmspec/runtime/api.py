"""The front door of the runtime: `run` a spec, `resume` a run, `open_run` to read one.

    run("specs/quickstart.lmspec", overrides=["pretrain.steps=100"], out="runs/q")
    r = open_run("runs/q")
    r.status("pretrain")["status"]      # "finished"
    r.metrics("pretrain")[-1]           # {"stage": "pretrain", "step": 100, "loss": ..., ...}
    model = r.model("pretrain")         # torch.nn.Module with its final weights
    ids = r.tokenizer("pretrain").encode("Once upon a time")

    run("specs/quickstart.lmspec", nproc=2)   # 2 workers through torch's elastic launcher (DDP)

Under torchrun (`torchrun --nproc-per-node 2 -m lmspec run SPEC`) each worker calls `run` as one
process would; `distributed` tells it its rank, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from lmspec.diagnostics import LmspecError, did_you_mean
from lmspec.runtime import distributed
from lmspec.runtime.errors import RunError
from lmspec.runtime.loop import InterruptFlag, Interrupted, drive, finished_artifacts, reset_stage
from lmspec.runtime.progress import Progress, render_summary
from lmspec.runtime.rundir import RunDir, canonical_spec, default_run_dir, spec_diff

__all__ = ["run", "resume", "open_run", "Run", "default_cache_dir", "runnable_stages"]


def default_cache_dir() -> Path:
    """Tokenised data and trained BPE merges, shared by runs: $LMSPEC_CACHE, else ~/.cache/lmspec."""
    return Path(os.environ.get("LMSPEC_CACHE") or Path.home() / ".cache" / "lmspec")


def runnable_stages(report, schedule) -> tuple[list[str], dict[str, str]]:
    """(stages this runtime can run, in order; {stage: why not} for the others)."""
    from lmspec.runtime.objectives import OBJECTIVES

    blocked: dict[str, str] = {}
    for plan in schedule:
        if plan.kind in ("feedback", "rl"):
            needs = [a for a in plan.after if a in blocked]
            if needs:
                blocked[plan.name] = f"it needs stage '{needs[0]}', which cannot run yet"
            continue
        needs = [a for a in plan.after if a in blocked]
        if needs:
            blocked[plan.name] = f"it needs stage '{needs[0]}', which cannot run yet"
            continue
        later = [t.objective.kind for t in plan.spec.objective if t.objective.kind not in OBJECTIVES]
        if later:
            blocked[plan.name] = f"objective {later[0]} arrives with the rest of the RL runtime"
    return [p.name for p in schedule if p.name not in blocked], blocked


def _check(spec_path: str | Path, overrides: tuple[str, ...]):
    """Everything `lmspec check` checks, the meta-device pass and the hf checkpoints included."""
    from lmspec.compiler.api import check_file
    from lmspec.compiler.compile import check_stages

    path = Path(spec_path)
    if not path.is_file():
        raise RunError(f"{spec_path}: {'is a directory, not a spec file' if path.is_dir() else 'no such file'}",
                       help="give the path of a .lmspec file")
    report = check_file(path, overrides=tuple(overrides))
    report.raise_for_errors()
    schedule, _ = check_stages(report, meta=True)
    report.raise_for_errors()
    return report, schedule


def _warnings(report, progress) -> None:
    """A spec's warnings are shown before it runs, as `lmspec check` shows them."""
    from lmspec.diagnostics import render_text

    if report.diagnostics and not progress.quiet:
        progress.message(render_text(report.diagnostics, report.sources, colour=False))


def _preflight(schedule, selected: list[str], dev, report=None, cache_dir: Path | None = None) -> None:
    """What would fail in a stage's setup and can be known now, before a run directory exists:
    the device's precision, compiler and attention kernel, then (given the report) each train stage's tokenizer
    and data, prepared into the cache (`_prepare_data`)."""
    from lmspec.runtime.engine import check_attention_kernel, check_compile, resolve_precision

    for plan in schedule:
        if plan.name in selected and plan.kind in ("train", "rl"):
            resolve_precision(plan.spec.precision, dev)
            if getattr(plan.spec, "compile", False):
                check_compile(dev, plan.name)
            check_attention_kernel(dev, plan.name, plan.spec.attention_kernel)
    if report is not None and distributed.env_rank() == 0 and not distributed.launched():
        _prepare_data(report, schedule, selected, dev, cache_dir)


def _prepare_data(report, schedule, selected: list[str], dev, cache_dir: Path | None) -> None:
    """Each selected train stage's tokenizer (a BPE learned from a file yields only so many
    tokens) and data (a jsonl record without a field the stage reads, an example longer than
    seq_len, a label outside the classifier), prepared into the data cache as the stage's setup
    would, so that what only the data can tell stops the run before its directory exists; the
    stages find both in the cache. Only in the process that starts the run: launched workers
    find them prepared."""
    import tempfile

    from lmspec.runtime.stages import make_stage
    from lmspec.runtime.stages.base import RunContext

    with tempfile.TemporaryDirectory(prefix="lmspec-preflight-") as tmp:
        ctx = RunContext(report, schedule, dev, Path(cache_dir) if cache_dir else default_cache_dir(), Path(tmp),
                         log=lambda message: None)  # the stage logs it again at its setup
        for plan in schedule:
            if plan.name in selected and plan.kind == "train":
                make_stage(plan, ctx).preflight()


def _seeds(report) -> dict:
    return {name: {"seed": b.seed} for name, b in report.spec.blocks.items() if hasattr(b, "seed")}


def run(spec_path: str | Path, *, overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None,
        device: str = "auto", only: str | None = None, progress: Progress | None = None,
        cache_dir: Path | None = None, tensorboard: bool = False, nproc: int = 1, backend: str = "auto",
        port: int | None = None) -> "Run":
    """Check the spec (raising LmspecError with every diagnostic), then run its stages in the
    experiment graph's order into a new run directory. Returns the `Run`. `nproc` > 1 launches
    that many workers on this machine (DDP; gloo on CPU, NCCL on CUDA, or `backend`), with the
    rendezvous on `port` (default a free one); the spec is checked for that world size first."""
    import torch  # noqa: F401  (fail here, not halfway, when torch is missing)

    from lmspec.runtime.engine import resolve_device

    overrides = tuple(overrides)
    progress = progress or Progress()
    size = _world_size(nproc)
    report, schedule = _check(spec_path, overrides)
    if distributed.env_rank() == 0 and not distributed.launched():  # a launcher has shown them already
        _warnings(report, progress)
    selected, blocked = _selection(report, schedule, only)
    _check_world(report, schedule, selected, size)
    dev = resolve_device(device)
    if tensorboard:
        _tensorboard_writer()  # fail before a run directory exists
    _preflight(schedule, selected, dev, report, cache_dir)
    if nproc > 1:
        path = Path(out) if out is not None else default_run_dir(spec_path)
        argv = ["run", str(spec_path), "--out", str(path), *_worker_options(device, backend, overrides, tensorboard)]
        argv += ["--only", only] if only else []
        _launch(nproc, argv, dev, backend, port, progress, cache_dir, path)
        return Run(path)
    with distributed.process_group(device, backend) as dev:
        progress = _progress_of_this_rank(progress)
        path = None
        if distributed.is_main():
            path = Path(out) if out is not None else default_run_dir(spec_path)
            RunDir.create(path, report=report, spec_path=str(spec_path), overrides=overrides, device=str(dev),
                          extra={"stages": selected, "cannot_run": blocked, "only": only, "seeds": _seeds(report),
                                 "world_size": size, "tensorboard": tensorboard})
        rd = RunDir(Path(distributed.broadcast_json(str(path) if path is not None else None)))
        return _execute(rd, report, schedule, selected, blocked, dev, progress, cache_dir, tensorboard)


def _world_size(nproc: int) -> int:
    """The number of processes this run will have: `nproc` for a launcher, else torchrun's."""
    if nproc < 1:
        raise RunError(f"--nproc {nproc}: expected 1 or more processes", help="leave it out to run in one process")
    inside = distributed.env_world_size()
    if nproc > 1 and inside > 1:
        raise RunError(f"--nproc {nproc} inside a worker of a launcher that already started {inside} (WORLD_SIZE)",
                       help="give the number of processes to torchrun (--nproc-per-node) or to `lmspec run --nproc`, "
                            "not both")
    return nproc if nproc > 1 else inside


def _check_world(report, schedule, selected: list[str], size: int) -> None:
    """What the world size makes impossible, said before a run directory or a worker exists."""
    problems = distributed.check_world(report, schedule, selected, size)
    if problems:
        raise LmspecError(problems, report.sources)
    distributed.refuse_single_process_stages(schedule, selected, size)


def _worker_options(device: str, backend: str, overrides: tuple[str, ...], tensorboard: bool) -> list[str]:
    argv = ["--device", device, "--backend", backend]
    for o in overrides:
        argv += ["--set", o]
    return argv + (["--tensorboard"] if tensorboard else [])


def _launch(nproc: int, argv: list[str], dev, backend: str, port: int | None, progress: Progress, cache_dir,
            path: Path) -> None:
    distributed.resolve_backend(backend, dev)  # NCCL without CUDA: said here, before a worker starts
    if dev.type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus < nproc:
            raise RunError(f"--nproc {nproc} on CUDA, but torch sees {gpus} GPU{'s' * (gpus != 1)} on this machine",
                           help=f"use --nproc {gpus} (one process per GPU), or --device cpu")
    mode = "quiet" if progress.quiet else "live" if progress.live else "plain"
    env = {"LMSPEC_CACHE": str(cache_dir)} if cache_dir is not None else {}
    distributed.launch(nproc, argv, port=port, cpu=dev.type != "cuda", progress=mode, run_path=path, env=env)


class _Silent(Progress):
    """The progress of ranks other than 0: they train, rank 0 tells."""

    def __init__(self):
        super().__init__(quiet=True)

    def message(self, text: str) -> None:
        pass


def _progress_of_this_rank(progress: Progress) -> Progress:
    return progress if distributed.is_main() else _Silent()


def resume(run_path: str | Path, *, force: bool = False, overrides: list[str] | tuple[str, ...] = (),
           device: str = "auto", progress: Progress | None = None, cache_dir: Path | None = None,
           tensorboard: bool = False, nproc: int = 1, backend: str = "auto", port: int | None = None) -> "Run":
    """Continue a run from the last good checkpoint of each unfinished stage. The spec is read
    again from where the run read it; if it now means something else, resuming is refused with
    a diff unless `force` — and then every stage whose settings changed runs again from step 0
    (with the stages after it), except that an unfinished stage whose model is unchanged
    continues from its checkpoint under its new settings. New `overrides` need `force`.
    Any `nproc` resumes any run: a checkpoint holds one replica, whatever wrote it. A run
    started with `tensorboard` goes on writing its events (the manifest says so); `tensorboard`
    here turns them on for the rest of a run started without."""
    from lmspec.runtime.engine import resolve_device

    progress = progress or Progress()
    size = _world_size(nproc)
    tensorboard = tensorboard or bool(RunDir.open(Path(run_path)).manifest.get("tensorboard"))
    if tensorboard:
        _tensorboard_writer()  # fail before anything resumes
    if nproc > 1:
        rd = RunDir.open(Path(run_path))
        if rd.manifest.get("status") == "finished" and not overrides:
            progress.message(f"{rd.path}: this run has finished; nothing to do")
            return Run(rd.path)
        argv = ["run", "--resume", str(rd.path), *_worker_options(device, backend, tuple(overrides), tensorboard)]
        argv += ["--force"] if force else []
        _launch(nproc, argv, resolve_device(device), backend, port, progress, cache_dir, rd.path)
        return Run(rd.path)
    with distributed.process_group(device, backend) as dev:
        progress = _progress_of_this_rank(progress)
        return _resume(Path(run_path), force, tuple(overrides), dev, size, progress, cache_dir, tensorboard)


def _resume(run_path: Path, force: bool, overrides: tuple[str, ...], dev, size: int, progress, cache_dir,
            tensorboard: bool) -> "Run":
    main = distributed.is_main()
    rd = RunDir.open(run_path)
    manifest = rd.manifest
    if overrides and not force:
        raise RunError("--set on --resume changes the run's spec", help="add --force to resume with changed settings")
    if manifest.get("status") == "finished" and not overrides:
        progress.message(f"{rd.path}: this run has finished; nothing to do")
        return Run(rd.path)
    spec_path = Path(manifest["spec"])
    if not spec_path.is_file():
        raise RunError(f"the spec this run read, {spec_path}, is gone",
                       help=f"put it back (the run keeps a copy of its files in {rd.path / 'spec'})")
    all_overrides = tuple(manifest.get("overrides", [])) + tuple(overrides)
    report, schedule = _check(spec_path, all_overrides)
    selected, blocked = _selection(report, schedule, manifest.get("only"))
    _check_world(report, schedule, selected, size)
    _preflight(schedule, selected, dev)
    now, then = canonical_spec(report), rd.canonical
    if now != then and not force:
        raise RunError(f"the spec changed since this run started:\n{spec_diff(then, now)}",
                       help=f"undo the change, or resume anyway with `lmspec run --resume {rd.path} --force`")
    if main:  # the others wait below until rank 0 has reset what changed
        with rd.lock():
            if now != then:
                for stage, settings_only in _changed_stages(schedule, then, now).items():
                    status = rd.stage_status(stage)
                    if status.get("status") == "pending":
                        continue
                    restart = not settings_only or _model_changed(schedule[stage], then, now)
                    if status.get("status") == "finished" or restart:
                        progress.message(f"stage {stage}: its settings changed; it runs again from step 0 (--force)")
                        reset_stage(rd, stage)
                    else:
                        progress.message(f"stage {stage}: its settings changed; it continues from its checkpoint "
                                         "under the new settings (--force)")
                rd.save_spec(report, now)
                rd.update_manifest(overrides=list(all_overrides), forced=True)
        rd.update_manifest(status="running", stages=selected, cannot_run=blocked, tensorboard=tensorboard,
                           devices=manifest.get("devices", [manifest.get("device")]) + [str(dev)],
                           world_sizes=manifest.get("world_sizes", [manifest.get("world_size", 1)]) + [size])
    distributed.barrier()
    return _execute(rd, report, schedule, selected, blocked, dev, progress, cache_dir, tensorboard)


def _blocks_of(plan) -> set[str]:
    """The blocks a stage's result depends on: its own, its model, data and tokenizer, and a
    feedback or rl stage's judge, reward, reference, eval judges and prompt data."""
    names = {plan.name}
    for key in ("model", "policy"):
        use = getattr(plan.spec, key, None)
        if use is not None:
            names.add(use.model)
    for key in ("data", "tokenizer", "judge", "reward", "reference"):  # a changed judge relabels the pairs
        value = getattr(plan.spec, key, None)
        if isinstance(value, str):
            names.add(value)
    names.update(getattr(plan.spec, "eval_judges", ()))
    prompts = getattr(plan.spec, "prompts", None) or getattr(getattr(plan.spec, "rollouts", None), "prompts", None)
    if prompts is not None:
        names.add(prompts.data)
    return names


def _changed_stages(schedule, then: dict, now: dict) -> dict[str, bool]:
    """{stage: whether it changed only in its own training settings} for every stage whose blocks
    differ between two canonical specs, and every stage after one (whose start changed)."""
    changed: dict[str, bool] = {}
    tokenizer_changed = any(b["kind"] == "tokenizer" and then["blocks"].get(n) != b for n, b in now["blocks"].items())
    for plan in schedule:
        upstream = tokenizer_changed or any(a in changed for a in plan.after)
        own = any(then["blocks"].get(b) != now["blocks"].get(b) for b in _blocks_of(plan))
        if own or upstream:
            changed[plan.name] = not upstream
    return changed


def _model_changed(plan, then: dict, now: dict) -> bool:
    use = getattr(plan.spec, "model", None) or getattr(plan.spec, "policy", None)
    return use is None or then["blocks"].get(use.model) != now["blocks"].get(use.model) or \
        then["blocks"][plan.name].get("model") != now["blocks"][plan.name].get("model")


def _selection(report, schedule, only: str | None) -> tuple[list[str], dict[str, str]]:
    runnable, blocked = runnable_stages(report, schedule)
    if only is None:
        return runnable, blocked
    names = schedule.names()
    if only not in names:
        raise RunError(f"--only {only}: the spec has no stage named '{only}' (stages: {', '.join(names) or 'none'})",
                       help=did_you_mean(only, names))
    if only in blocked:
        raise RunError(f"--only {only}: stage '{only}' cannot run yet: {blocked[only]}")
    plan = schedule[only]
    wanted = set(plan.after) | {only}
    return [n for n in runnable if n in wanted], {k: v for k, v in blocked.items() if k in wanted}


def _execute(rd: RunDir, report, schedule, selected, blocked, dev, progress, cache_dir, tensorboard) -> "Run":
    from lmspec.runtime.stages import make_stage
    from lmspec.runtime.stages.base import RunContext

    for name, why in blocked.items():
        progress.message(f"stage {name}: cannot run yet: {why}")
    ctx = RunContext(report, schedule, dev, Path(cache_dir) if cache_dir else default_cache_dir(), rd.path,
                     log=progress.message)
    status = "running"
    main = distributed.is_main()
    try:
        with rd.lock() if main else contextlib.nullcontext(), InterruptFlag() as interrupt:
            board = _TensorBoard(rd.path / "tensorboard") if tensorboard and main else None
            for plan in schedule:
                if plan.name not in selected:
                    continue
                for need in plan.after:  # a finished stage of an earlier session of this run
                    if need not in ctx.artifacts:
                        found = finished_artifacts(rd, need, schedule[need].model)
                        if found is not None:
                            ctx.artifacts[need] = found
                stage = make_stage(plan, ctx)
                ctx.artifacts[plan.name] = drive(stage, rd, progress, interrupt=interrupt, tensorboard=board)
                later = [n for n in selected if n not in ctx.artifacts]
                if interrupt.set and later:
                    raise Interrupted(f"interrupted: stage '{plan.name}' finished; {', '.join(later)} did not start",
                                      help=f"resume with `lmspec run --resume {rd.path}`")
        status = "partial" if blocked else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise RunError("interrupted", help=f"resume with `lmspec run --resume {rd.path}`") from None
    except Interrupted:
        status = "interrupted"
        raise
    except RunError:
        status = "failed"
        raise
    except OSError as err:  # a full disk, a read-only or vanished run directory
        status = "failed"
        raise RunError(f"cannot write the run: {err.strerror or err}"
                       + (f" ({err.filename})" if getattr(err, "filename", None) else ""),
                       help=f"free some space or fix the directory's permissions, then resume with "
                            f"`lmspec run --resume {rd.path}`; what was written so far is kept") from None
    except Exception as err:
        status = "failed"
        if _out_of_memory(err):
            raise RunError(f"out of memory on {dev}: {str(err).splitlines()[0]}",
                           help="lower batch (raise grad_accum to keep the global batch), seq_len or the model size; "
                                f"then resume with `lmspec run --resume {rd.path} --force --set STAGE.KEY=VALUE`") \
                from None
        raise
    finally:
        try:
            if main:
                rd.finish(status)
        except OSError:
            pass  # the disk that failed the run may refuse this too; the stages' files tell the story
    result = Run(rd.path)
    if not progress.quiet:
        _print_samples(result, selected, progress)
        render_summary(result, progress.stream, live=progress.live)
    if blocked:
        progress.message(f"not run yet: {', '.join(blocked)} (see above)")
    return result


def _out_of_memory(err: Exception) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _print_samples(result: "Run", stages: list[str], progress) -> None:
    """The samples of each stage's last evaluation: what the model now writes."""
    for stage in stages:
        samples = result.samples(stage)
        if not samples:
            continue
        last = [s for s in samples if s["step"] == samples[-1]["step"]]
        progress.message(f"samples of {stage} at step {last[0]['step']}:")
        for s in last:
            progress.message(f"  {s['prompt']}|{s['text']}".replace("\n", " "))


def _tensorboard_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError("--tensorboard needs the tensorboard package",
                       help="pip install 'lmspec[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


class _TensorBoard:
    """The event files of a run, one directory per stage (RUN/tensorboard/STAGE/), each opened by
    its stage with the step it resumes from. A SummaryWriter's `purge_step` writes a SessionLog
    START, and TensorBoard then hides the events of earlier sessions at or after that step, in
    every tag of that directory: one directory for the run would also hide the steps of the
    stages that finished before the crash, which are not run again. TensorBoard ignores the first
    START of a directory, so a stage's first session writes one too."""

    def __init__(self, root: Path):
        self.root, self.SummaryWriter = root, _tensorboard_writer()

    def open(self, stage: str, start: int):
        # a stage resumed from the checkpoint of step `start` logs step start + 1 first: the
        # earlier session's point at `start` stays, as its line in metrics.jsonl does
        return self.SummaryWriter(str(self.root / stage), purge_step=start + 1)


# ----------------------------------------------------------------------------- reading a run


class Run:
    """A run directory, read: each stage's status, metrics, samples, trained model and tokenizer."""

    def __init__(self, path: str | Path):
        self._dir = RunDir.open(Path(path))
        self.path = self._dir.path

    @property
    def manifest(self) -> dict:
        return self._dir.manifest

    @property
    def stages(self) -> list[str]:
        return self._dir.stages()

    def _stage(self, stage: str | None) -> str:
        names = self.stages
        if stage is None:
            done = [s for s in names if self.status(s).get("status") == "finished"]
            if not done:
                raise RunError(f"{self.path}: no stage has finished yet", help="name a stage, or wait for one")
            return done[-1]
        if stage == "":  # the last finished stage that can generate text
            done = [s for s in names if self.status(s).get("status") == "finished" and self._generates(s)]
            if not done:
                raise RunError(f"{self.path}: no finished stage trained a model that generates text",
                               help="name a stage with --stage, or train a decoder first")
            return done[-1]
        if stage not in names:
            raise RunError(f"{self.path} has no stage '{stage}' (stages: {', '.join(names) or 'none'})",
                           help=did_you_mean(stage, names))
        return stage

    def resolve_stage(self, stage: str | None) -> str:
        """The stage `model(stage)` reads (see there)."""
        return self._stage(stage)

    def is_live(self) -> bool:
        """Whether a process is working in this run now."""
        return self._dir.is_live()

    def _generates(self, stage: str) -> bool:
        arch = self.path / "stages" / stage / "final" / "arch.json"
        if not arch.is_file():
            return False
        data = json.loads(arch.read_text())
        return data.get("decoder") is not None and any(h["kind"] == "lm" for h in data.get("heads", []))

    def status(self, stage: str) -> dict:
        return self._dir.stage_status(stage)

    def metrics(self, stage: str) -> list[dict]:
        return self._dir.metrics(stage)

    def samples(self, stage: str) -> list[dict]:
        return self._dir.samples(stage)

    def model(self, stage: str | None = None, *, device: str = "cpu"):
        """The stage's model with its final weights (or, for a stage that has not finished, the
        weights of its latest good checkpoint), in eval mode. `stage` None: the last finished
        stage; "": the last finished stage whose model generates text."""
        from lmspec.compiler.arch import arch_from_dict
        from lmspec.compiler.build import build_model
        from lmspec.runtime.checkpoint import latest_checkpoint, load_model_state, load_weights

        stage = self._stage(stage)
        sdir = self.path / "stages" / stage
        arch_file = sdir / "final" / "arch.json"
        if not arch_file.is_file():
            arch_file = sdir / "arch.json"
        if not arch_file.is_file():
            raise RunError(f"stage '{stage}' of {self.path} has no model yet", help="run or resume it first")
        model = build_model(arch_from_dict(json.loads(arch_file.read_text())), device=device)
        weights = sdir / "final" / "model.safetensors"
        if weights.is_file():
            load_weights(model, weights)
        else:
            found = latest_checkpoint(sdir / "checkpoints", warn=lambda m: None)
            if found is None:
                raise RunError(f"stage '{stage}' of {self.path} has neither final weights nor a good checkpoint")
            load_model_state(model, _checkpointed_model(found[1]), str(found[0]))
        return model.eval()

    def tokenizer(self, stage: str | None = None):
        from lmspec.runtime.tokenizers import load_tokenizer

        stage = self._stage(stage)
        final = self.path / "stages" / stage / "final" / "tokenizer"
        if final.is_dir():
            return load_tokenizer(final)
        name = self.status(stage).get("tokenizer")
        saved = self.path / "tokenizers" / (name or "")
        if name and saved.is_dir():
            return load_tokenizer(saved)
        raise RunError(f"stage '{stage}' of {self.path} has no tokenizer yet", help="run or resume it first")


def _checkpointed_model(tensors) -> dict:
    """The weights of the stage's model in a checkpoint: a train stage's `model`; an rl stage's
    `policy` (one process's format), or the `policy.` entries of its sharded `model`."""
    try:
        state = tensors["policy"]
    except KeyError:
        state = tensors["model"]
    if any(k.startswith("policy.") for k in state):
        state = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
    return state


def open_run(path: str | Path) -> Run:
    """Read a run directory (finished or not)."""
    return Run(path)

