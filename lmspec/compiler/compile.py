"""Compiling a checked spec: a schedule of stages, and the torch modules each stage trains.

`compile_spec(report)` orders the stages (train, feedback, rl) by the experiment graph and
says for each what it reads: its model (with any `with head ...` applied), where its weights
start (a stage's artifacts, or a local Hugging Face checkpoint), and which stages must finish
first. `build_stage_model(plan)` builds the stage's model and loads its initial weights; the
runtime executes the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmspec.compiler.allow import silence
from lmspec.compiler.arch import ArchConfig
from lmspec.compiler.costs import spec_figures, stage_arch
from lmspec.compiler.graphs import ancestors, flow_graph, stage_order

from lmspec.diagnostics import CODES, Diagnostic

__all__ = ["StagePlan", "Schedule", "compile_spec", "build_stage_model", "InitFrom", "init_diagnostics",
           "spec_relative", "check_stages"]

CODES.setdefault("LMS091", "an `init: hf(...)` checkpoint that does not fit the stage's model")


@dataclass(frozen=True)
class InitFrom:
    """Where a stage's weights start: the final weights of `stage`, or a Hugging Face directory."""

    stage: str | None = None
    hf: str | None = None


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: str  # train | feedback | rl
    spec: Any  # the typed block (schema.TrainSpec, FeedbackSpec, RLSpec)
    model: str | None  # the model block it trains (train) or samples from (feedback, rl)
    arch: ArchConfig | None
    init: InitFrom | None
    new_head: bool  # `with head ...`: the head is fresh even when the body is loaded
    after: tuple[str, ...]  # stages that must finish first


@dataclass
class Schedule:
    stages: list[StagePlan] = field(default_factory=list)

    def __iter__(self):
        return iter(self.stages)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def __getitem__(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


def _init(use, spec, spec_file: str) -> InitFrom | None:
    init = getattr(spec, "init", None)
    if isinstance(init, str):
        return InitFrom(stage=init)
    if init is not None and getattr(init, "kind", None) == "hf":
        return InitFrom(hf=str(spec_relative(init.path, spec_file)))
    if use is not None and use.stage is not None:
        return InitFrom(stage=use.stage)
    return None


def spec_relative(path: str, spec_file: str) -> Path:
    """A path written in a spec is relative to the spec's own file, as imports are."""
    p = Path(path).expanduser()
    if p.is_absolute() or spec_file.startswith("<"):
        return p
    return Path(spec_file).parent / p


def compile_spec(report) -> Schedule:
    """The schedule of a spec that passed `check` (raises LmspecError otherwise)."""
    report.raise_for_errors()
    graph = flow_graph(report.spec)
    kinds = {n: report.spec.resolved.blocks[n].kind for n in report.spec.blocks}
    order = stage_order(graph)
    schedule = Schedule()
    for name in order:
        spec = report.spec.blocks[name]
        if kinds[name] == "feedback":
            model = spec.policy.model
            arch = report.models.get(model)
        else:  # train, rl
            model, arch = stage_arch(report, name) or (None, None)
        # the model a stage trains (train) or samples from (feedback, rl), as `use` (schema.ModelUse)
        use = getattr(spec, "model", None) if kinds[name] == "train" else getattr(spec, "policy", None)
        before = ancestors(graph, name)
        after = tuple(a for a in order if a in before)
        spec_file = report.spec.resolved.blocks[name].span.file
        schedule.stages.append(StagePlan(name, kinds[name], spec, model, arch, _init(use, spec, spec_file),
                                         bool(use is not None and getattr(use, "head", None)), after))
    return schedule


def check_stages(report, *, meta: bool = True):
    """What `lmspec check` (and `lmspec run`, before anything starts) adds to a report that passed
    the rules: the schedule, the figures, and with `meta` the meta-device pass of every model and
    the comparison of `init: hf(...)` checkpoints (both need torch). Their diagnostics join the
    report's. Returns (schedule, figures)."""
    schedule = compile_spec(report)
    figures, problems = spec_figures(report, meta=meta)
    if meta:
        problems += init_diagnostics(report, schedule)
    report.diagnostics += silence(report.spec, problems)
    return schedule, figures


def build_stage_model(plan: StagePlan, *, device=None, dtype=None,
                      artifacts: dict[str, Path] | None = None):
    """The stage's model on `device`, with its initial weights loaded.

    `artifacts` maps finished stages to their weights (a safetensors file, written by the
    runtime); a stage that starts from another stage's weights needs them."""
    from lmspec.compiler.build import build_model

    if plan.arch is None:
        raise ValueError(f"stage '{plan.name}' trains no model")
    model = build_model(plan.arch, device=device, dtype=dtype)
    if plan.init is None:
        return model
    if plan.init.hf is not None:
        from lmspec.compiler.hf import load_hf_weights

        load_hf_weights(model, plan.init.hf, new_heads=plan.new_head)
        return model
    source = (artifacts or {}).get(plan.init.stage)
    if source is None:
        raise FileNotFoundError(f"stage '{plan.name}' starts from the weights of stage '{plan.init.stage}', "
                                f"which has not produced them yet; run '{plan.init.stage}' first")
    from safetensors import safe_open

    own = model.state_dict()
    state = {}
    with safe_open(str(source), framework="pt", device=str(device or "cpu")) as f:  # no pickle
        for key in f.keys():
            if plan.new_head and _is_head(key):
                continue  # `with head ...`: the body is reused, the head starts fresh
            state[key] = f.get_tensor(key)
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k in own and
                                                 own[k].shape == v.shape}, strict=False)
    missing = [m for m in missing if not _is_head(m) or not plan.new_head]
    missing = [m for m in missing if not _tied_copy(model, m, state)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or wrong:
        raise ValueError(f"the weights of stage '{plan.init.stage}' ({source}) do not fit stage '{plan.name}': "
                         f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}, "
                         f"wrong shapes {wrong[:8]}")
    return model


def init_diagnostics(report, schedule: Schedule | None = None) -> list[Diagnostic]:
    """LMS091 for every `init: hf("dir")` whose checkpoint does not fit the stage's model: the
    tensors are compared by their safetensors headers against a meta-device build, so nothing is
    read or allocated. Each diagnostic names the missing, unexpected and misshapen tensors."""
    out = []
    for plan in schedule or compile_spec(report):
        if plan.init is None or plan.init.hf is None or plan.arch is None:
            continue
        from lmspec.compiler.hf import HFError, check_hf_weights  # imports torch: only for a checkpoint

        block = report.spec.resolved.blocks[plan.name]
        try:
            check_hf_weights(plan.arch, plan.init.hf, new_heads=plan.new_head)
        except (HFError, OSError, ValueError) as err:
            lines = str(err).splitlines()
            out.append(Diagnostic("error", "LMS091", f"init: {lines[0]}", block.span_of(("init",)),
                                  notes=[line.strip() for line in lines[1:]],
                                  help="describe the checkpoint with `lmspec import-hf DIR` and start from that "
                                       "model block"))
    return out


_HEADS = ("lm_head", "mlm_head", "nsp_head", "classifier", "score", "pooler")


def _is_head(name: str) -> bool:
    return name.split(".")[0] in _HEADS


def _tied_copy(model, name: str, state: dict) -> bool:
    """A tied weight saved once under its twin's name (safetensors stores shared tensors once)."""
    target = model.get_parameter(name) if name.endswith(("weight", "bias")) else None
    if target is None:
        return False
    return any(p is target and other in state for other, p in model.named_parameters(remove_duplicate=False))
