"""The figures `lmspec check` prints: what each model and each stage costs.

Per model: exact parameters, FLOPs per token, KV-cache memory. Per stage: tokens, FLOPs and
training memory at the stage's batch, sequence length, precision and optimizer. Every model is
also run forward and backward on the meta device at its stage's shapes (`analysis.meta_pass`),
so wiring errors surface without allocating anything (LMS090), and the backward pass of the
stage's own objectives shows which parameters the stage leaves untrained (LMS096, a warning
naming the stage). Formulas: docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lmspec.compiler import analysis as A
from lmspec.compiler.analysis.memory import RLDeviceMemory, rl_device_memory
from lmspec.compiler.arch import ArchConfig
from lmspec.compiler.lower import lower_model
from lmspec.diagnostics import CODES, Diagnostic, Label

__all__ = ["ModelFigures", "StageFigures", "RLFigures", "Figures", "spec_figures", "stage_arch", "render_figures",
           "rl_figures", "rl_sharded_memory", "generation_flops", "stage_seq_len", "value_arch"]

CODES.setdefault("LMS090", "a model failed its forward/backward pass on the meta device")
CODES.setdefault("LMS096", "parameters that a stage's objectives do not train (warning)")

# The model output each objective's loss reads (lmspec.runtime.objectives: `out.logits`, ...);
# rl stages train the policy's logits.
LOSS_READS = {"clm": "logits", "prefix_lm": "logits", "sft": "logits", "span_corruption": "logits", "mlm": "logits",
              "dpo": "logits", "nsp": "nsp_logits", "classify": "class_logits", "bradley_terry": "scores"}

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class ModelFigures:
    name: str
    arch: str
    layers: int
    params: A.ParamCount
    flops: A.FlopCount  # at the model's context
    kv_cache: A.KVCacheEstimate  # one sequence of `context` tokens, bf16

    def to_json(self) -> dict:
        return {
            "name": self.name, "arch": self.arch, "layers": self.layers,
            "params": {"total": self.params.total, "non_embedding": self.params.non_embedding,
                       "active": self.params.active, "breakdown": self.params.breakdown},
            "flops_per_token": {"seq_len": self.flops.seq_len, "forward": self.flops.forward,
                                "training": self.flops.training, "breakdown": self.flops.breakdown},
            "kv_cache_bytes": {"batch": 1, "seq_len": self.flops.seq_len, "dtype": "bf16",
                               **asdict(self.kv_cache)},
        }


@dataclass
class StageFigures:
    name: str
    kind: str  # train | rl
    model: str
    batch: int
    seq_len: int
    steps: int
    tokens: int
    flops: int
    precision: str
    optimizer: str
    memory: A.MemoryEstimate
    note: str = ""
    rl: RLFigures | None = None  # rl stages: the rollouts, and each model's FLOPs and memory

    def to_json(self) -> dict:
        memory = asdict(self.memory)
        out = {"name": self.name, "kind": self.kind, "model": self.model, "batch": self.batch,
               "seq_len": self.seq_len, "steps": self.steps, "tokens": self.tokens, "flops": self.flops,
               "precision": self.precision, "optimizer": self.optimizer, "memory_bytes": memory,
               "note": self.note}
        if self.rl is not None:
            out["rl"] = asdict(self.rl)
        return out


@dataclass
class RLFigures:
    """What an rl stage costs, model by model (docs/analysis.md#rl-stages). Every rollout is
    counted at its longest: `prompt_tokens` (the prompts' `tokens`) + `new_tokens`
    (`max_new_tokens`), the policy's context at most."""

    rollouts: int  # steps x per_step
    prompt_tokens: int
    new_tokens: int
    updates: int  # optimizer steps: steps x epochs x minibatches per step
    minibatch: int
    flops: dict[str, int]  # generation, old_logprobs, reference, value, reward, training (whole stage)
    memory: dict[str, int]  # bytes: policy, value (trained); reference, reward, judges (frozen); kv_cache
    scorer: str  # what scores the rollouts: "reward model 'r'", "judge 'j'"
    not_counted: list[str] = field(default_factory=list)  # models whose cost check cannot know (hf judges)


@dataclass
class Figures:
    models: dict[str, ModelFigures] = field(default_factory=dict)
    stages: dict[str, StageFigures] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"models": {n: m.to_json() for n, m in self.models.items()},
                "stages": {n: s.to_json() for n, s in self.stages.items()}}


def stage_arch(report, stage: str) -> tuple[str, ArchConfig] | None:
    """The model a train/rl stage trains, with its `with head ...` applied; None if it did not lower."""
    spec = report.spec.blocks.get(stage)
    use = getattr(spec, "model", None) or getattr(spec, "policy", None)
    if use is None or use.model not in report.models:
        return None
    if use.head is None:
        return use.model, report.models[use.model]
    return use.model, lower_model(use.model, report.spec.blocks[use.model], head_override=use.head)


def stage_seq_len(spec, arch: ArchConfig) -> int:
    """The tokens per sequence a train stage (`seq_len`, default the context) or an rl stage
    (prompt + new tokens) runs `arch` on, within its context."""
    rollouts = getattr(spec, "rollouts", None)
    wanted = rollouts.prompts.tokens + rollouts.max_new_tokens if rollouts is not None else spec.seq_len or arch.context
    return min(wanted, arch.context)


def _precision(p: str) -> str:
    return "bf16" if p == "auto" else p  # auto trains in bf16 on a GPU, the device the figure is for


def _decoder_len(arch: ArchConfig, spec, seq_len: int) -> int | None:
    if arch.arch != "encoder_decoder":
        return None
    for term in getattr(spec, "objective", []):
        o = term.objective
        if o.kind == "span_corruption":  # targets: the corrupted tokens plus one sentinel per span, plus eos
            corrupted = round(seq_len * o.noise)
            return max(1, corrupted + round(corrupted / o.mean_span) + 1)
    return seq_len


def spec_figures(report, *, meta: bool = True) -> tuple[Figures, list[Diagnostic]]:
    """Figures for every lowered model and every train/rl stage, and meta-check diagnostics."""
    figures, diagnostics = Figures(), []
    for name, arch in report.models.items():
        figures.models[name] = ModelFigures(
            name, arch.arch, sum(s.n_layers for s in arch.stacks), A.count_parameters(arch),
            A.flops_per_token(arch, arch.context), A.kv_cache_memory(arch, batch=1, seq_len=arch.context))
    passes: dict[tuple, A.MetaResult] = {}  # one meta pass per model, shapes and loss
    failed: set[tuple] = set()  # LMS090 once per model and shapes, at the first stage that meets it
    for stage, spec in report.spec.blocks.items():
        kind = report.spec.resolved.blocks[stage].kind
        if kind not in ("train", "rl"):
            continue
        found = stage_arch(report, stage)
        if found is None:
            continue
        model, arch = found
        if kind == "train":
            batch, steps = spec.batch, spec.steps
            seq_len = stage_seq_len(spec, arch)
            dec = _decoder_len(arch, spec, seq_len)
            cost = A.stage_cost(arch, steps=steps, batch=batch, seq_len=seq_len, decoder_seq_len=dec)
            tokens, flops, note = cost.tokens, cost.flops, ""
            micro = max(1, batch // spec.grad_accum)
            rl = None
        else:  # rl: the rollouts, and every model the stage runs (rl_figures)
            r = spec.rollouts
            batch, steps, dec = r.per_step, spec.steps, None
            seq_len = stage_seq_len(spec, arch)
            rl = rl_figures(report, stage, arch)
            tokens, flops = steps * batch * seq_len, sum(rl.flops.values())
            epochs = getattr(spec.algorithm, "epochs", 1)
            note = (f"generation + scoring by policy, reference{', value' * (spec.algorithm.kind == 'ppo')} and "
                    f"{rl.scorer} + {epochs} training epoch{'s' * (epochs != 1)}")
            micro = rl.minibatch
        precision = _precision(spec.precision)
        momentum = getattr(spec.optimizer, "momentum", 0.0)  # sgd keeps a buffer only with momentum
        memory = A.training_memory(arch if kind == "train" else eval_mode(arch), batch=micro, seq_len=seq_len,
                                   precision=precision, optimizer=spec.optimizer.kind, decoder_seq_len=dec,
                                   momentum=momentum,
                                   checkpoint_activations=getattr(spec, "checkpoint_activations", False),
                                   attention_kernel=getattr(spec, "attention_kernel", "auto"))
        if rl is not None:
            memory = _rl_memory(report, stage, arch, memory, rl)
        figures.stages[stage] = StageFigures(stage, kind, model, batch, seq_len, steps, tokens, flops, precision,
                                             spec.optimizer.kind, memory, note, rl)
        if not meta:
            continue
        reads = tuple(sorted({LOSS_READS[t.objective.kind] for t in spec.objective})) if kind == "train" else ("logits",)
        shapes = (model, micro, seq_len, dec, arch.heads)
        if shapes + (reads,) not in passes:
            passes[shapes + (reads,)] = A.meta_pass(arch, batch=micro, seq_len=seq_len, decoder_seq_len=dec, reads=reads)
        result = passes[shapes + (reads,)]
        blocks = report.spec.resolved.blocks
        if shapes not in failed and result.problems:
            failed.add(shapes)
            for p in result.problems:
                diagnostics.append(Diagnostic(
                    "error", "LMS090", f"model '{model}' fails on the meta device at stage '{stage}': {p}",
                    blocks[model].name_span, [Label(blocks[stage].name_span, "at this stage's shapes")],
                    help="this is a bug in lmspec if the spec passed every other check; please report it"))
        if result.unreached:
            diagnostics.append(_untrained(stage, kind, spec, model, result.unreached, blocks))
    if meta:  # models no stage trains still get a pass at batch 1 x context; nothing trains them here
        used = {s.model for s in figures.stages.values()}
        for name, arch in report.models.items():
            if name not in used:
                for p in A.meta_pass(arch, batch=1, seq_len=arch.context).problems:
                    diagnostics.append(Diagnostic("error", "LMS090", f"model '{name}' fails on the meta device: {p}",
                                                  report.spec.resolved.blocks[name].name_span))
    return figures, diagnostics


# ---------------------------------------------------------------------------- rl stages


def generation_flops(arch: ArchConfig, prompt: int, new: int) -> int:
    """Forward FLOPs of sampling `new` tokens after a `prompt`-token prompt with the KV cache:
    one pass over the prompt, then one pass per new token but the last (it is never fed back),
    each over one position that attends to every key cached so far. The vocabulary head runs on
    the last position of each pass only (`logits_to_keep=1`)."""
    one = A.forward_flops(arch, 1)
    per_key = sum(v for k, v in one.items() if k.endswith("attention_scores"))  # scores of one query, one key
    step = sum(one.values())  # one position with one key: the head included
    prefill = A.forward_flops(arch, prompt)
    head = prefill.pop("lm_head", 0) // prompt  # the head of one position
    total = sum(prefill.values()) + head
    for j in range(1, new):  # new token j (from 1) sees the prompt and j tokens: prompt + j keys
        total += step + per_key * (prompt + j - 1)
    return total


def eval_mode(arch: ArchConfig) -> ArchConfig:
    """`arch` as an rl stage's updates run it, in eval mode: no dropout anywhere (so no dropout
    masks, and attention layers with dropout take the fast kernels and FlexAttention)."""
    from dataclasses import replace

    stacks = {name: replace(s, layers=tuple(replace(layer, dropout=0.0) for layer in s.layers))
              for name, s in (("encoder", arch.encoder), ("decoder", arch.decoder)) if s is not None}
    return replace(arch, dropout=0.0, **stacks)


def value_arch(arch: ArchConfig) -> ArchConfig:
    """PPO's value model: the policy's body with a scalar head (runtime.stages.rl._value_model)."""
    from dataclasses import replace

    from lmspec.compiler.arch import HeadConfig

    return replace(arch, heads=(HeadConfig("scalar", pool="last"),), tie_embeddings=False)


def _scorer_arch(report, name: str) -> tuple[str, ArchConfig | None]:
    """(how to name it, the model) of what scores texts: a reward-model stage or a judge whose
    model is trained in the spec; None for judges check cannot size (hf, openai, rules)."""
    kind = report.spec.resolved.blocks[name].kind
    if kind == "train":
        found = stage_arch(report, name)
        return f"reward model '{name}'", found[1] if found else None
    use = getattr(report.spec.blocks.get(name), "model", None)
    model = getattr(use, "model", None)
    if getattr(use, "kind", None) is not None or model is None or model not in report.models:
        return f"judge '{name}'", None
    return f"judge '{name}'", report.models[model]


def rl_figures(report, stage: str, arch: ArchConfig) -> RLFigures:
    """The rollouts, FLOPs and memory of rl stage `stage` whose policy is `arch`; formulas in
    docs/analysis.md#rl-stages."""
    spec = report.spec.blocks[stage]
    r, algo = spec.rollouts, spec.algorithm
    T = stage_seq_len(spec, arch)
    prompt = min(r.prompts.tokens, T - 1) if T > 1 else 1
    new = T - prompt
    B, steps = r.per_step, spec.steps
    epochs = getattr(algo, "epochs", 1)
    mb = min(spec.minibatch or B, B)
    forward = sum(A.forward_flops(arch, T).values())
    # PPO's value model: its body and pooled head, and the scalar head once more on every response position
    value = sum(A.forward_flops(value_arch(arch), T).values()) + 2 * arch.d_model * new if algo.kind == "ppo" else 0
    scorer, reward = _scorer_arch(report, spec.reward)
    flops = {
        "generation": steps * B * generation_flops(arch, prompt, new),
        "old_logprobs": steps * B * forward,  # the policy's log-probs of the rollouts, before any update
        "reference": steps * B * forward,
        "value": steps * B * value,
        "reward": steps * B * sum(A.forward_flops(reward, min(T, reward.context)).values()) if reward else 0,
        # each epoch runs every rollout forward and backward through the policy (and the value model)
        "training": steps * epochs * B * 3 * (forward + value),
    }
    not_counted = [] if reward is not None else [scorer]
    judges = 0
    for name in spec.eval_judges:  # each is loaded once more, beside the reward
        what, model = _scorer_arch(report, name)
        if model is None:
            not_counted.append(what)
        else:
            judges += 4 * A.count_parameters(model).total
    memory = {
        "reference": 4 * A.count_parameters(arch).total,  # fp32, frozen: no gradient, no optimizer state
        "reward": 4 * A.count_parameters(reward).total if reward is not None else 0,
        "judges": judges,
        # generate runs outside autocast, so its cache is fp32; every rollout of a step at once
        "kv_cache": A.kv_cache_memory(arch, batch=B, seq_len=T, dtype_bytes=4).total,  # sliding layers: a ring of W
    }
    return RLFigures(rollouts=steps * B, prompt_tokens=prompt, new_tokens=new,
                     updates=steps * epochs * -(-B // mb), minibatch=mb, flops=flops, memory=memory, scorer=scorer,
                     not_counted=not_counted)


def _rl_memory(report, stage: str, arch: ArchConfig, policy: A.MemoryEstimate, rl: RLFigures) -> A.MemoryEstimate:
    """The peak of an rl stage: every model's weights, the trained models' gradients and
    optimizer state, and the larger of an update's activations and the rollouts' KV cache
    (the two never live at once)."""
    spec = report.spec.blocks[stage]
    parts = {"policy": policy}
    if spec.algorithm.kind == "ppo":
        parts["value"] = A.training_memory(eval_mode(value_arch(arch)), batch=rl.minibatch,
                                           seq_len=rl.prompt_tokens + rl.new_tokens,
                                           precision=policy.precision, optimizer=spec.optimizer.kind,
                                           momentum=getattr(spec.optimizer, "momentum", 0.0),
                                           checkpoint_activations=spec.checkpoint_activations,
                                           attention_kernel=spec.attention_kernel)
    for name, m in parts.items():
        rl.memory[name] = m.weights + m.weight_copies + m.gradients + m.optimizer + m.activations
    frozen = rl.memory["reference"] + rl.memory["reward"] + rl.memory["judges"]
    weights = sum(m.weights for m in parts.values()) + frozen
    copies = sum(m.weight_copies for m in parts.values())
    grads = sum(m.gradients for m in parts.values())
    optim = sum(m.optimizer for m in parts.values())
    update = sum(m.activations for m in parts.values())
    acts = max(update, rl.memory["kv_cache"])
    breakdown = {f"{name}.{k}": v for name, m in parts.items() for k, v in m.activation_breakdown.items()}
    if rl.memory["kv_cache"] > update:
        breakdown = {"kv_cache": rl.memory["kv_cache"]}
    return A.MemoryEstimate(weights=weights, weight_copies=copies, gradients=grads, optimizer=optim, activations=acts,
                            total=weights + copies + grads + optim + acts, activation_breakdown=breakdown,
                            precision=policy.precision, optimizer_name=policy.optimizer_name)


def rl_sharded_memory(report, stage: str, arch: ArchConfig, rl: RLFigures, world: int) -> RLDeviceMemory:
    """One of `world` devices of rl stage `stage` under `parallel: fsdp`: the policy (and PPO's
    value model) sharded, the frozen models whole (`analysis.memory.rl_device_memory`).
    `report` and `rl`: the stage as one device sees it, its share of the rollouts and of each
    minibatch (`rules_parallel._per_rank_rl`)."""
    spec = report.spec.blocks[stage]
    # under a half-precision stage the reference is held in that precision, as the sharded policy
    # computes (runtime.stages.rl): half its fp32 bytes
    reference = rl.memory["reference"] // (2 if _precision(spec.precision) in ("bf16", "fp16") else 1)
    value = eval_mode(value_arch(arch)) if spec.algorithm.kind == "ppo" else None
    return rl_device_memory(eval_mode(arch), value=value, world=world,
                            batch=rl.minibatch, seq_len=rl.prompt_tokens + rl.new_tokens,
                            rollouts=spec.rollouts.per_step,
                            frozen=reference + rl.memory["reward"] + rl.memory["judges"],
                            precision=_precision(spec.precision), optimizer=spec.optimizer.kind,
                            momentum=getattr(spec.optimizer, "momentum", 0.0),
                            checkpoint_activations=spec.checkpoint_activations,
                            attention_kernel=spec.attention_kernel)


def _modules(parameters: list[str], most: int = 6) -> str:
    """pooler.dense.weight, pooler.dense.bias, nsp_head.weight -> "pooler.dense, nsp_head"."""
    names = list(dict.fromkeys(p.rsplit(".", 1)[0] if "." in p else p for p in parameters))
    shown = ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
    return f"{shown} ({len(parameters)} tensor{'s' * (len(parameters) != 1)})"


def _untrained(stage: str, kind: str, spec, model: str, names: list[str], blocks) -> Diagnostic:
    """LMS096: parameters the stage's loss does not reach keep the values the stage starts with."""
    if kind == "train":
        objectives = " + ".join(dict.fromkeys(t.objective.kind for t in spec.objective))
        what, span = f"its objective ({objectives})", blocks[stage].span_of(("objective",))
    else:
        what, span = "its rl loss (the policy's logits)", blocks[stage].span_of(("policy",))
    return Diagnostic(
        "warning", "LMS096", f"{kind} '{stage}' leaves {_modules(names)} of '{model}' untrained: {what} does "
        "not reach them", span,
        [Label(blocks[model].name_span, f"'{model}' is defined here")],
        help="they keep the values the stage starts with; add an objective that reads them, train them in "
             "another stage, or remove them from the model")


# ---------------------------------------------------------------------------- text


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for scale, suffix in ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"),
                          (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}{unit}"


def human_bytes(n: float) -> str:
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:  # 1000 to 1023 of a unit: whole numbers, not 1.02e+03
            return f"{n / scale:.3g} {suffix}" if n / scale < 999.5 else f"{n / scale:.0f} {suffix}"
    return f"{int(n)} B"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header)] + [fmt(r) for r in rows]


def render_figures(f: Figures) -> str:
    out = []
    if f.models:
        out.append("models")
        rows = [[m.name, m.arch, str(m.layers), f"{m.params.total:,}", human(m.params.non_embedding),
                 human(m.flops.forward, "FLOP"), human(m.flops.training, "FLOP"), human_bytes(m.kv_cache.total)]
                for m in f.models.values()]
        out += _table(["model", "arch", "layers", "params", "non-emb", "fwd/token", "train/token", "kv-cache@ctx"], rows)
        for m in f.models.values():  # a mixture of experts: what one token reads (fwd/token counts only that)
            if m.params.active != m.params.total:
                out.append(f"  {m.name}: active {m.params.active:,} of {m.params.total:,} parameters per token "
                           f"({human(m.params.active)}), fwd/token {human(m.flops.forward, 'FLOP')} counts the "
                           f"active experts only")
    if f.stages:
        out.append("stages")
        rows = [[s.name, s.model, f"{s.batch}x{s.seq_len}", str(s.steps), human(s.tokens), human(s.flops, "FLOP"),
                 f"{s.precision}/{s.optimizer}", human_bytes(s.memory.weights + s.memory.weight_copies),
                 human_bytes(s.memory.gradients), human_bytes(s.memory.optimizer), human_bytes(s.memory.activations),
                 human_bytes(s.memory.total)] for s in f.stages.values()]
        out += _table(["stage", "model", "batch", "steps", "tokens", "FLOPs", "precision", "weights", "grads",
                       "optim", "activ.", "memory"], rows)
    rl = [s for s in f.stages.values() if s.rl is not None]
    if rl:  # each model an rl stage runs: FLOPs of the whole stage, memory at its peak
        out.append("rl stages")
        rows = [[s.name, f"{s.rl.rollouts:,}", f"{s.rl.prompt_tokens}+{s.rl.new_tokens}", f"{s.rl.updates:,}",
                 human(s.rl.flops["generation"], "FLOP"),
                 human(sum(s.rl.flops[k] for k in ("old_logprobs", "reference", "value", "reward")), "FLOP"),
                 human(s.rl.flops["training"], "FLOP"), human_bytes(s.rl.memory["policy"]),
                 human_bytes(s.rl.memory["reference"]), human_bytes(s.rl.memory.get("value", 0)),
                 human_bytes(s.rl.memory["reward"] + s.rl.memory["judges"]), human_bytes(s.rl.memory["kv_cache"])]
                for s in rl]
        out += _table(["stage", "rollouts", "tokens", "updates", "generate", "score", "train", "policy", "reference",
                       "value", "reward", "kv-cache"], rows)
        for s in rl:
            if s.rl.not_counted:
                out.append(f"  {s.name}: not counted: {', '.join(s.rl.not_counted)} (sized only when loaded)")
    return "\n".join(out)
