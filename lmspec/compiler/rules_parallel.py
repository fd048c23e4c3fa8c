"""Design rules about the devices a stage trains on: memory per device under the stage's
parallelism, and a batch that splits over them. All before anything launches.

    LMS120  a stage that does not fit the memory of one device, even sharded (with the figures)
    LMS121  `parallel: ddp` for a stage that fits its devices only sharded (fsdp)
    LMS122  a device memory that is not a size (`device_memory: "80GB"`)
    LMS123  a stage that fits with less than a tenth of the device's memory to spare (warning)
    LMS136  `attention_kernel: flex` for a layer FlexAttention cannot take (it would run SDPA)
    LMS137  `attention_kernel: flex` where no layer needs a dense mask: it changes nothing (warning)

and LMS089 a global batch that does not split into grad_accum x devices equal micro-batches.

Where the devices come from: `lmspec check --devices N --device-memory 80GB` (for every
stage), else a train stage's `devices:` and `device_memory:` keys (an rl stage's
`device_memory:`), else one device of unknown memory, for which nothing is checked. `batch` is
the global batch of one optimizer step: each device runs micro-batches of
batch / (grad_accum x devices) sequences, as the runtime splits it (runtime.distributed).
`parallel: auto` is ddp when the stage fits replicated with HEADROOM to spare, fsdp otherwise
(ddp when no memory is known); `lmspec run` chooses by the same function
(`runtime.distributed.resolve_parallel`). An rl stage splits its rollouts and minibatches over
the devices and holds its frozen models (reference, reward) whole on each; under ddp every model
is whole on each, under fsdp the policy (and PPO's value model) is sharded and gathered whole for
the rollouts; its `auto` chooses as a train stage's does.
The figures: `analysis.device_memory`, `analysis.memory.rl_device_memory`,
docs/analysis.md#per-device-memory.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from types import SimpleNamespace
from typing import Iterator

from lmspec.compiler import analysis as A
from lmspec.compiler.analysis.memory import RLDeviceMemory
from lmspec.compiler.costs import (_decoder_len, _precision, _table, human_bytes, rl_sharded_memory,
                                  spec_figures, stage_arch, stage_seq_len)
from lmspec.diagnostics import CODES, Diagnostic, Label

__all__ = ["Hardware", "DevicePlan", "parse_size", "device_plans", "stage_plan", "split_help", "split_diagnostic",
           "rollout_split",
           "world_diagnostics", "render_device_plans", "PARALLEL_RULES"]

CODES.setdefault("LMS120", "a stage that does not fit the memory of one device, even sharded")
CODES.setdefault("LMS121", "parallel: ddp for a stage that fits its devices only sharded (fsdp)")
CODES.setdefault("LMS122", "a device memory that is not a size")
CODES.setdefault("LMS123", "a stage that fits with less than a tenth of the device's memory to spare (warning)")
CODES.setdefault("LMS136", "attention_kernel: flex for a layer FlexAttention cannot take")
CODES.setdefault("LMS137", "attention_kernel: flex where no layer needs a dense mask (warning)")

#: below this share of a device's memory left free, a fit is a warning: the estimate leaves out
#: the CUDA context, the allocator's cache and fragmentation, kernel workspaces and the logits
HEADROOM = 0.10

_UNITS = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes of a size written "80GB" (powers of 1000: B, KB, MB, GB, TB) or "80GiB" (powers of
    1024: KiB, MiB, GiB, TiB); a ValueError saying what is wrong otherwise."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f'"{text}" is not a size: write a number and a unit, e.g. "80GB" or "80GiB"')
    number, unit = m.groups()
    if not unit:
        raise ValueError(f'"{text}" has no unit: write e.g. "{number}GB" (10^9 bytes) or "{number}GiB" (2^30 bytes)')
    if unit not in _UNITS:
        same = next((u for u in _UNITS if u.lower() == unit.lower()), None)
        hint = f'; did you mean "{number}{same}"?' if same else ""
        raise ValueError(f'unknown unit "{unit}" in "{text}": expected B, KB, MB, GB, TB (powers of 1000) or '
                         f"KiB, MiB, GiB, TiB (powers of 1024){hint}")
    size = int(Fraction(number) * _UNITS[unit])
    if size < 1:
        raise ValueError(f'"{text}" is no memory at all: give the memory of one device, e.g. "80GB"')
    return size


@dataclass(frozen=True)
class Hardware:
    """What `lmspec check --devices N --device-memory SIZE` says about every stage; None keeps
    each stage's own keys."""

    devices: int | None = None
    device_memory: str | None = None  # as written, e.g. "80GB"

    def __post_init__(self):
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices must be 1 or more, got {self.devices}")
        if self.device_memory is not None:
            parse_size(self.device_memory)


@dataclass(frozen=True)
class DevicePlan:
    """One stage on its devices: the parallelism it runs under and what one device holds."""

    stage: str
    kind: str  # train | rl
    devices: int
    parallel: str  # as written: auto | ddp | fsdp ("-" for an rl stage on one device)
    chosen: str  # ddp | fsdp, or "one" for one process
    seq_len: int
    memory: A.DeviceMemory  # one device under `chosen`
    device_memory: int | None  # bytes of one device, if known
    memory_text: str | None  # as written: "80GB"
    devices_from: str  # "--devices", "devices:" or "" (the default, 1)
    memory_from: str  # "--device-memory", "device_memory:" or ""
    replicated: A.DeviceMemory | None = None  # the ddp figures, when there are several devices
    sharded: A.DeviceMemory | None = None  # the fsdp figures, when there are several devices

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.memory.total <= self.device_memory

    @property
    def share(self) -> float | None:
        """The share of one device's memory the stage needs."""
        return None if self.device_memory is None else self.memory.total / self.device_memory

    def to_json(self) -> dict:
        out = {"devices": self.devices, "parallel": self.parallel, "chosen": self.chosen,
               "micro_batch": self.memory.batch, "seq_len": self.seq_len, "device_memory": self.device_memory,
               "fits": self.fits, "memory_bytes": asdict(self.memory)}
        if self.sharded is not None and self.chosen != "fsdp":
            out["fsdp_bytes"] = self.sharded.total
        return out


# ---------------------------------------------------------------------------- the plans


def _memory_of(text: str | None) -> int | None:
    try:
        return parse_size(text) if text is not None else None
    except ValueError:
        return None  # LMS122 says so


def _plain(m: A.MemoryEstimate, batch: int, checkpoint: bool = False) -> A.DeviceMemory:
    """A one-process stage's figures (costs.spec_figures) as one device's."""
    return A.DeviceMemory("ddp", 1, batch, m.weights, m.weight_copies, 0, m.gradients, 0, m.optimizer, m.activations,
                          m.total, m.activation_breakdown, checkpoint)


def _per_rank_rl(spec, devices: int):
    """What one of `devices` ranks of rl stage `spec` holds at once: its share of the step's
    rollouts and of each minibatch (they split evenly: `rollout_split`)."""
    rollouts = spec.rollouts.model_copy(update={"per_step": spec.rollouts.per_step // devices})
    mb = None if spec.minibatch is None else spec.minibatch // devices
    return spec.model_copy(update={"rollouts": rollouts, "minibatch": mb})


def stage_plan(report, stage: str, hardware: Hardware | None = None, *, figures=None) -> DevicePlan | None:
    """The plan of one train or rl stage of a checked spec (`report`: a CheckReport, or anything
    with `.spec` and `.models`); None when no device count or memory is known for it, or its
    model did not lower. `hardware` overrides the stage's keys; `figures`: the stages'
    `costs.spec_figures`, if already made (an rl stage reads its own there)."""
    hw = hardware or Hardware()
    spec = report.spec.blocks.get(stage)
    kind = report.spec.resolved.blocks[stage].kind if spec is not None else None
    if kind not in ("train", "rl"):
        return None
    devices_key = getattr(spec, "devices", None) if kind == "train" else None
    devices = hw.devices or devices_key or 1
    text = hw.device_memory or spec.device_memory
    if hw.devices is None and devices_key is None and text is None:
        return None
    found = stage_arch(report, stage)
    if found is None:
        return None
    arch = found[1]
    sources = ("--devices" if hw.devices else "devices:" if devices_key else "",
               "--device-memory" if hw.device_memory else "device_memory:" if text else "")
    memory = _memory_of(text)
    if kind == "rl":  # a rank holds 1/N of the rollouts and of each minibatch, and the frozen models whole
        rl_devices = hw.devices or 1
        if rl_devices > 1 and not rollout_split(stage, spec, rl_devices):
            per_rank = _per_rank_rl(spec, rl_devices)
            view = SimpleNamespace(spec=replace(report.spec, blocks={**report.spec.blocks, stage: per_rank}),
                                   models=report.models)
            rl = spec_figures(view, meta=False)[0].stages[stage]
            m = _plain(rl.memory, rl.rl.minibatch, spec.checkpoint_activations)
            replicated = replace(m, world=rl_devices)  # DDP's gradients are its all-reduce buckets: nothing more
            sharded = rl_sharded_memory(view, stage, arch, rl.rl, rl_devices)
            chosen = spec.parallel
            if chosen == "auto":  # as for train stages: ddp where it fits with HEADROOM to spare
                chosen = "ddp" if memory is None or replicated.total <= (1 - HEADROOM) * memory else "fsdp"
            return DevicePlan(stage, kind, rl_devices, spec.parallel, chosen, rl.seq_len,
                              sharded if chosen == "fsdp" else replicated, memory, text, *sources, replicated, sharded)
        figures = figures or spec_figures(SimpleNamespace(spec=report.spec, models=report.models), meta=False)[0].stages
        rl = figures[stage]
        return DevicePlan(stage, kind, 1, "-", "one", rl.seq_len,
                          _plain(rl.memory, rl.rl.minibatch, spec.checkpoint_activations), memory, text, *sources)
    seq_len = stage_seq_len(spec, arch)
    shapes = dict(seq_len=seq_len, precision=_precision(spec.precision), optimizer=spec.optimizer.kind,
                  decoder_seq_len=_decoder_len(arch, spec, seq_len), momentum=getattr(spec.optimizer, "momentum", 0.0),
                  checkpoint_activations=spec.checkpoint_activations, attention_kernel=spec.attention_kernel)
    micro = max(1, spec.batch // (spec.grad_accum * devices))  # LMS089 when it does not divide
    # dpo keeps a frozen copy of the starting model, whole on every device (runtime.stages.train)
    frozen = 4 * A.count_parameters(arch).total if any(t.objective.kind == "dpo" for t in spec.objective) else 0
    with_frozen = lambda m: replace(m, frozen=frozen, total=m.total + frozen)  # noqa: E731
    replicated = with_frozen(A.device_memory(arch, world=devices, parallel="ddp", batch=micro,
                                             grad_accum=spec.grad_accum, **shapes))
    if devices == 1:  # one process: nothing is wrapped, whatever `parallel` says
        return DevicePlan(stage, kind, 1, spec.parallel, "one", seq_len, replicated, memory, text, *sources)
    sharded = with_frozen(A.device_memory(arch, world=devices, parallel="fsdp", batch=micro, **shapes))
    chosen = spec.parallel
    if chosen == "auto":
        chosen = "ddp" if memory is None or replicated.total <= (1 - HEADROOM) * memory else "fsdp"
    return DevicePlan(stage, kind, devices, spec.parallel, chosen, seq_len,
                      sharded if chosen == "fsdp" else replicated, memory, text, *sources, replicated, sharded)


def device_plans(report, hardware: Hardware | None = None) -> dict[str, DevicePlan]:
    """The plan of every train and rl stage that has devices or a device memory (from
    `hardware`, by default the report's own, or from its keys)."""
    if hardware is None:
        hardware = getattr(report, "hardware", None)
    stages = [n for n, b in report.spec.blocks.items() if report.spec.resolved.blocks[n].kind in ("train", "rl")]
    figures = None
    out = {}
    for name in stages:
        if report.spec.resolved.blocks[name].kind == "rl" and figures is None:
            figures = spec_figures(SimpleNamespace(spec=report.spec, models=report.models), meta=False)[0].stages
        plan = stage_plan(report, name, hardware, figures=figures)
        if plan is not None:
            out[name] = plan
    return out


# ---------------------------------------------------------------------------- the rules


def _err(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None,
         notes: list[str] | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, labels or [], help, notes or [])


def _ways(n: int) -> str:
    return f"{n} device{'s' * (n != 1)}"


def split_help(batch: int, grad_accum: int, size: int, *, world: str) -> str:
    """How to make `batch` split over `size` x `grad_accum`: nearby batches, and the world sizes
    that divide it (`world`: how the reader sets one, "run with --nproc")."""
    unit = grad_accum * size
    lower = batch - batch % unit
    sizes = [f"batch: {b}" for b in (lower, lower + unit) if b > 0]
    text = f"use {' or '.join(sizes)} (a multiple of {grad_accum} x {size})"
    if batch % grad_accum == 0:
        per = batch // grad_accum
        fits = [str(n) for n in range(1, per + 1) if per % n == 0][:8]
        text += f", or {world} {', '.join(fits)}"
    return text + "; `batch` is the global batch of one optimizer step, whatever the number of processes"


def rollout_split(name: str, spec, size: int, *, world: str = "run with --nproc") -> list[tuple[tuple, str, str]]:
    """What keeps rl stage `name`'s rollouts from splitting over `size` processes, as (the key's
    path, message, help): a step's prompt groups (GRPO's `group`, RLOO's `k` samples of one
    prompt; a single rollout for PPO) split evenly over the ranks, a group never across two, and
    so does every minibatch, into minibatch / size rollouts per rank. `world`: how the reader sets
    the number of processes ("run with --nproc", "check with --devices")."""
    a = spec.algorithm
    key, group = {"grpo": ("group", getattr(a, "group", 1)), "rloo": ("k", getattr(a, "k", 1))}.get(a.kind, (None, 1))
    per_step, mb = spec.rollouts.per_step, spec.minibatch
    if size < 2 or per_step % group:  # per_step that is not whole groups is LMS089 at check time
        return []
    groups = per_step // group
    fits = [str(n) for n in range(1, groups + 1) if groups % n == 0 and (mb is None or mb % n == 0)][:8]
    nproc = f"{world} {', '.join(fits)}"
    out = []
    if groups % size:
        unit = group * size
        if mb is not None and mb % size == 0:  # a per_step the minibatch still divides
            unit = math.lcm(unit, mb)
        low = per_step - per_step % unit
        sizes = " or ".join(f"per_step: {n}" for n in (low, low + unit) if n > 0)
        if key:
            what = (f"{per_step} rollouts are {groups} prompts x {a.kind}'s {key} ({group}), and the samples of one "
                    "prompt never split across processes")
            unit_text = f"{group} x {size}"
        else:
            what, unit_text = f"each process takes an equal share of its {per_step} rollouts", str(size)
        if unit != group * size:
            unit_text += f" and of minibatch ({mb})"
        out.append((("rollouts", "per_step"),
                    f"per_step ({per_step}) of stage '{name}' does not split over {size} processes: {what}",
                    f"use {sizes} (a multiple of {unit_text}), or {nproc}; `per_step` is the rollouts of one step, "
                    "whatever the number of processes"))
    if mb is not None and mb % size:
        low = mb - mb % size
        sizes = " or ".join(f"minibatch: {n}" for n in (low, low + size) if n > 0 and per_step % n == 0)
        fix = f"use {sizes} (a multiple of {size} that divides per_step), or " if sizes else ""
        out.append((("minibatch",),
                    f"minibatch ({mb}) of stage '{name}' does not split over {size} processes: every update takes "
                    f"minibatch / {size} rollouts on each process",
                    f"{fix}{nproc}; `minibatch` is the rollouts of one update, whatever the number of processes"))
    return out


def split_diagnostic(name: str, spec, block, size: int, *, what: str = "processes",
                     world: str = "run with --nproc", label: Label | None = None) -> Diagnostic | None:
    """LMS089 when the global batch of train stage `name` does not split into
    grad_accum x `size` equal micro-batches (`what` the size counts: processes or devices)."""
    if size < 2 or spec.batch % (spec.grad_accum * size) == 0:
        return None
    return _err("LMS089", f"batch ({spec.batch}) of stage '{name}' does not split over {size} {what} x grad_accum "
                f"({spec.grad_accum}) = {spec.grad_accum * size} equal micro-batches", block.span_of(("batch",)),
                help=split_help(spec.batch, spec.grad_accum, size, world=world), labels=[label] if label else [])


def _parts(m: A.DeviceMemory, seq_len: int) -> str:
    """weights 1.2 GiB + gradients ... = total, as a note."""
    if isinstance(m, RLDeviceMemory):
        return _rl_parts(m, seq_len)
    parts = [("weights", m.weights), ("weight copies", m.weight_copies), ("gathered", m.gathered),
             ("gradients", m.gradients), ("unsharded gradients", m.gradient_buffers),
             ("optimizer", m.optimizer),
             (f"activations{' (checkpointed)' * m.checkpoint_activations}", m.activations),
             ("dpo's frozen reference", m.frozen)]
    shown = " + ".join(f"{name} {human_bytes(n)}" for name, n in parts if n)
    text = (f"per device: {shown} = {human_bytes(m.training + m.frozen)}, for micro-batches of {m.batch} x "
            f"{seq_len} tokens")
    if m.whole_model > m.training:
        text += (f"; but each process first builds the whole model in fp32 before sharding it: "
                 f"{human_bytes(m.whole_model)}")
    if m.bucket_rebuild > m.training:
        text += (f"; but before the second step DDP rebuilds its all-reduce buckets and holds the old and the new "
                 f"ones at once (weights + optimizer + 2 x gradients): {human_bytes(m.bucket_rebuild)}")
    return text


def _rl_parts(m: RLDeviceMemory, seq_len: int) -> str:
    """An rl stage under fsdp: its update and its rollout phase, and the frozen models, as a note."""
    update = [("weights", m.weights), ("gathered", m.gathered), ("gradients", m.gradients),
              ("unsharded gradients", m.gradient_buffers), ("optimizer", m.optimizer),
              (f"activations{' (checkpointed)' * m.checkpoint_activations}", m.activations)]
    rollout = [("weights", m.weights), ("optimizer", m.optimizer), ("gathered whole", m.gathered_whole),
               ("KV cache", m.kv_cache)]
    shown = lambda parts: " + ".join(f"{name} {human_bytes(n)}" for name, n in parts if n)  # noqa: E731
    text = (f"per device: updates {shown(update)} = {human_bytes(m.training)}, for micro-batches of {m.batch} x "
            f"{seq_len} tokens; rollouts {shown(rollout)} = {human_bytes(m.rollout)}; and the frozen models whole "
            f"{human_bytes(m.frozen)}: {human_bytes(m.total)}")
    if m.whole_model > max(m.training, m.rollout):
        text += (f"; but each process first builds the trained models whole in fp32 before sharding them: "
                 f"{human_bytes(m.whole_model)} (+ the frozen models)")
    return text


def _rl_fix(plan: DevicePlan, spec, limit: float = 1.0) -> str:
    """What would make an rl stage need at most `limit` of its device: sharding, where it does,
    then checkpointing; the caller adds fewer rollouts and a smaller policy."""
    fix = ""
    sharded = plan.sharded
    if plan.chosen == "ddp" and sharded is not None and sharded.total <= limit * plan.device_memory:
        fix = f"use parallel: fsdp ({human_bytes(sharded.total)} per device), "
    fix += "set checkpoint_activations: true, " * (not spec.checkpoint_activations)
    return fix


def _first_fit(report, plan: DevicePlan, spec, tries, limit: float = 1.0) -> str | None:
    """The first of `tries` (words, detail, devices, grad_accum, checkpoint_activations, parallel) under
    which the stage needs at most `limit` of one device's memory."""
    for words, detail, devices, grad_accum, checkpoint, parallel in tries:
        if spec.batch % (devices * grad_accum):
            continue
        changed = spec.model_copy(update={"grad_accum": grad_accum, "checkpoint_activations": checkpoint,
                                          "parallel": parallel})
        view = SimpleNamespace(spec=SimpleNamespace(blocks={**report.spec.blocks, plan.stage: changed},
                                                    resolved=report.spec.resolved), models=report.models)
        other = stage_plan(view, plan.stage, Hardware(devices, plan.memory_text))
        if other is not None and other.memory.total <= limit * plan.device_memory:
            return f"{words} ({human_bytes(other.memory.total)} per device{detail})"
    return None


def _remedies(report, plan: DevicePlan, spec, limit: float = 1.0) -> str:
    """What would make a train stage fit: checkpointing, a smaller micro-batch, more devices."""
    W, ga, ck, par = plan.devices, spec.grad_accum, spec.checkpoint_activations, spec.parallel
    factors = (2, 4, 8, 16, 32, 64)
    found = []
    if not ck:
        found.append(_first_fit(report, plan, spec, [("set checkpoint_activations: true", "", W, ga, True, par)],
                                limit))
    more = [(f"raise grad_accum to {ga * f}", f", micro-batches of {plan.memory.batch // f}", W, ga * f, ck, par)
            for f in factors if plan.memory.batch // f >= 1]
    found.append(_first_fit(report, plan, spec, more, limit))
    if W > 1 and plan.chosen != "fsdp":
        found.append(_first_fit(report, plan, spec, [("use parallel: fsdp", "", W, ga, ck, "fsdp")], limit))
    wider = [(f"shard over {W * f} devices", ", parallel: fsdp or auto", W * f, ga, ck, "fsdp") for f in factors]
    found.append(_first_fit(report, plan, spec, wider, limit))
    found = [f for f in found if f]
    if not found:
        return ("neither checkpoint_activations, a smaller micro-batch nor 64 times the devices make it fit: a "
                "smaller model or seq_len, or devices with more memory")
    return found[0] if len(found) == 1 else ", ".join(found[:-1]) + f", or {found[-1]}"


def _located(block, plan: DevicePlan) -> tuple[list[Label], list[str]]:
    """Where the device memory comes from: a label on the key, or a note naming the flag."""
    mem = human_bytes(plan.device_memory)
    if plan.memory_from == "device_memory:":
        return [Label(block.span_of(("device_memory",)), f"{mem} per device")], []
    return [], [f"{mem} per device from --device-memory {plan.memory_text}"]


def _memory_diagnostics(report, block, plan: DevicePlan, spec) -> Iterator[Diagnostic]:
    """LMS120, LMS121, LMS123 for one plan whose device memory is known (`report`: what
    `stage_plan` reads; `block`: the stage's resolved block)."""
    mem, need = human_bytes(plan.device_memory), human_bytes(plan.memory.total)
    labels, notes = _located(block, plan)
    notes = [_parts(plan.memory, plan.seq_len)] + notes
    if plan.fits:
        if plan.share > 1 - HEADROOM:
            fix = (_remedies(report, plan, spec, 1 - HEADROOM) if plan.kind == "train"
                   else _rl_fix(plan, spec, 1 - HEADROOM) + "fewer rollouts per step, or a smaller policy")
            yield Diagnostic(
                "warning", "LMS123", f"{plan.kind} '{plan.stage}' needs {need} per device, {plan.share:.0%} of the "
                f"{mem} a device has: the estimate leaves out the CUDA context, the allocator's cache and kernel "
                "workspaces",
                block.name_span, labels, help=f"leave a tenth free: {fix}", notes=notes)
        return
    sharded = plan.sharded
    trained = "the policy and value model" if plan.kind == "rl" and spec.algorithm.kind == "ppo" else "the policy"
    if plan.chosen == "ddp" and plan.parallel == "ddp" and sharded is not None and sharded.total <= plan.device_memory:
        how = f" ({trained} sharded, gathered whole for the rollouts)" if plan.kind == "rl" else ""
        yield _err("LMS121", f"{plan.kind} '{plan.stage}' needs {need} per device replicated on {_ways(plan.devices)} "
                   f"(parallel: ddp), more than the {mem} a device has; sharded it needs {human_bytes(sharded.total)}",
                   block.span_of(("parallel",)), labels=labels, notes=notes,
                   help=f"use parallel: fsdp{how}, or auto, which chooses fsdp when a stage fits only sharded")
        return
    if plan.kind == "rl":
        if plan.devices == 1:
            where = "on one device"
        elif plan.chosen == "fsdp":
            where = (f"per device even sharded over {_ways(plan.devices)} (fsdp: {trained} sharded, gathered whole "
                     "for the rollouts; the frozen models whole on each)")
        else:
            where = f"per device on {_ways(plan.devices)} (DDP: every model whole on each)"
        also = f"; sharded it needs {human_bytes(sharded.total)}" if plan.chosen == "ddp" and sharded else ""
        yield _err("LMS120", f"rl '{plan.stage}' needs {need} {where}, more than the {mem} a device has{also}",
                   block.name_span, labels=labels, notes=notes,
                   help=_rl_fix(plan, spec) + "a smaller policy, fewer rollouts per step (rollouts.per_step, "
                   "minibatch) or more devices to share them, or a device with more memory")
        return
    if plan.devices == 1:
        how = "on one device"
    elif plan.chosen == "fsdp":
        how = f"per device even sharded over {_ways(plan.devices)} (fsdp)"
    else:
        how = f"per device replicated on {_ways(plan.devices)} (parallel: ddp; sharded: {human_bytes(sharded.total)})"
    yield _err("LMS120", f"train '{plan.stage}' needs {need} {how}, more than the {mem} a device has",
               block.name_span, labels=labels, notes=notes, help=_remedies(report, plan, spec))


def _report(x):
    """An Experiment as the report-like view `stage_plan` reads."""
    return SimpleNamespace(spec=x.validated, models=x.models)


def parallel_rule(x) -> Iterator[Diagnostic]:
    """LMS122 for device_memory values; LMS089, LMS120, LMS121 and LMS123 for every stage with
    devices or a device memory (`x.hardware`: `lmspec check --devices/--device-memory`)."""
    hardware = getattr(x, "hardware", None)
    for kind in ("train", "rl"):
        for name, spec in x.of_kind(kind).items():
            if spec.device_memory is not None:
                try:
                    parse_size(spec.device_memory)
                except ValueError as err:
                    yield _err("LMS122", f"device_memory: {err}", x.block(name).span_of(("device_memory",)),
                               help='write the memory of one device with its unit: "80GB" (10^9 bytes) or "80GiB" '
                                    "(2^30 bytes)")
    plans = device_plans(_report(x), hardware)
    for name, plan in plans.items():
        spec = x.validated.blocks[name]
        if plan.kind == "train":
            block = x.block(name)
            label = Label(block.span_of(("devices",)), f"{_ways(plan.devices)}") \
                if plan.devices_from == "devices:" else None
            world = "check with --devices" if plan.devices_from == "--devices" else "plan for devices:"
            split = split_diagnostic(name, spec, block, plan.devices, what="devices", world=world, label=label)
            if split is not None:
                yield split
        elif hardware is not None and (hardware.devices or 1) > 1:  # rl: whole prompt groups on each rank
            block = x.block(name)
            for path, message, help in rollout_split(name, spec, hardware.devices, world="check with --devices"):
                yield _err("LMS089", message.replace("processes", "devices"), block.span_of(path), help=help)
        if plan.device_memory is not None:
            yield from _memory_diagnostics(_report(x), x.block(name), plan, spec)


def attention_kernel_rule(x) -> Iterator[Diagnostic]:
    """LMS136 and LMS137 for train and rl stages that ask for `attention_kernel: flex`."""
    report = _report(x)
    for kind in ("train", "rl"):
        for name, spec in x.of_kind(kind).items():
            if spec.attention_kernel != "flex":
                continue
            found = stage_arch(report, name)
            if found is None:
                continue
            model, arch = found
            seq_len = stage_seq_len(spec, arch)
            layers = [(model, *layer) for layer in  # rl updates run in eval mode
                      A.dense_mask_layers(arch, seq_len, dropout=kind == "train")]
            reward = stage_arch(report, spec.reward) if kind == "rl" and \
                getattr(report.spec.resolved.blocks.get(spec.reward), "kind", None) == "train" else None
            if reward is not None:  # a reward model follows the stage's key too; it scores in eval mode
                from lmspec.compiler.rules_stages import stage_tokenizer

                # prompt + response in its own tokens, up to its context: as many as the policy's
                # when they share a tokenizer, else up to its context
                tokenizer = stage_tokenizer(x, spec.reward)
                same = tokenizer is not None and tokenizer == stage_tokenizer(x, name)
                reward_len = min(seq_len, reward[1].context) if same else reward[1].context
                layers += [(reward[0], *layer) for layer in
                           A.dense_mask_layers(reward[1], reward_len, dropout=False)]
            span = x.block(name).span_of(("attention_kernel",))
            refused = [(owner, stack, i, why) for owner, stack, i, why in layers if why is not None]
            if refused:
                model, stack, i, why = refused[0]
                more = f" (and {len(refused) - 1} more layer{'s' * (len(refused) > 2)})" if len(refused) > 1 else ""
                yield _err("LMS136", f"{kind} '{name}' has attention_kernel: flex, but FlexAttention cannot take "
                           f"layer {i} of model '{model}'s {stack} ({why}){more}: it would run SDPA with a dense mask",
                           span, help="use `attention_kernel: auto`, which gives FlexAttention the layers it can take "
                                      "and SDPA the rest" + (", or attention dropout 0 (FlexAttention has none)"
                                                             if "dropout" in why else
                                                             ", or heads of 16 or more (head_dim)"
                                                             if "head_dim" in why else ""))
            elif not layers:
                yield Diagnostic(
                    "warning", "LMS137", f"{kind} '{name}' has attention_kernel: flex, but no layer of model "
                    f"'{model}' needs a dense mask over {seq_len} tokens"
                    + (f", nor of '{reward[0]}' over {reward_len}" if reward else "") +
                    " (a sliding window shorter than that, a prefix, ALiBi): "
                    "FlexAttention would run no layer", span, [],
                    "remove `attention_kernel: flex`: causal and bidirectional attention run SDPA's fused kernels", [])


PARALLEL_RULES = [parallel_rule, attention_kernel_rule]


# ---------------------------------------------------------------------------- at `lmspec run`


def world_diagnostics(report, stages: list[str], size: int) -> list[Diagnostic]:
    """What a run of `size` processes makes impossible in train stages `stages`, said before any
    process starts: a batch that does not split over them (LMS089, in the words of `--nproc`).
    The memory was checked by `check` for the devices the stage is planned for; the run's own
    device is known only to the runtime."""
    out = []
    for name in stages:
        split = split_diagnostic(name, report.spec.blocks[name], report.spec.resolved.blocks[name], size)
        if split is not None:
            out.append(split)
    return out


# ---------------------------------------------------------------------------- text


def render_device_plans(plans: dict[str, DevicePlan]) -> str:
    """The per-device table `lmspec check` prints under the figures."""
    if not plans:
        return ""
    rows = []
    for p in plans.values():
        m = p.memory
        parallel = {"one": "-", "ddp": "ddp", "fsdp": "fsdp"}[p.chosen]
        if p.parallel == "auto" and p.chosen != "one":
            parallel = f"auto -> {p.chosen}"
        fits = "-" if p.fits is None else f"{'yes' if p.fits else 'NO'} {p.share:.0%}"
        weights, grads = m.weights + m.weight_copies + m.gathered, m.gradients + m.gradient_buffers
        activations = human_bytes(m.activations) + (" ckpt" if m.checkpoint_activations else "")
        if isinstance(m, RLDeviceMemory):  # the frozen models with the weights, as under ddp; the larger phase
            weights += m.frozen
            if m.rollout > m.training:
                weights, grads = m.weights + m.gathered_whole + m.frozen, 0
                activations = "kv " + human_bytes(m.kv_cache)
        rows.append([p.stage, str(p.devices), parallel, f"{m.batch}x{p.seq_len}", human_bytes(weights),
                     human_bytes(grads), human_bytes(m.optimizer), activations,
                     human_bytes(m.total), human_bytes(p.device_memory) if p.device_memory else "-", fits])
    lines = ["per device"] + _table(["stage", "devices", "parallel", "micro", "weights", "grads", "optim", "activ.",
                                     "memory", "device", "fits"], rows)
    rl = [p for p in plans.values() if p.kind == "rl"]
    if rl:
        lines.append("  rl stages: the rollouts and minibatches split; ddp: every model whole on each device; "
                     "fsdp: the policy (and value model) sharded, gathered whole for the rollouts, the frozen "
                     "models whole")
    for p in rl:
        if isinstance(p.memory, RLDeviceMemory):
            m = p.memory
            lines.append(f"  {p.stage} (fsdp): updates {human_bytes(m.training)} or rollouts {human_bytes(m.rollout)} "
                         f"or the build before sharding {human_bytes(m.whole_model)}, + frozen models "
                         f"{human_bytes(m.frozen)}: {human_bytes(m.total)} per device")
    return "\n".join(lines)
