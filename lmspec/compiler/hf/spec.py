"""`ArchConfig` -> `.lmspec` text, and the `lmspec import-hf` command built on it.

The spec sets every key of the model block explicitly, even those equal to their defaults:
it documents the imported architecture completely, and a change of a language default
can never silently change what the file means.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..arch import ArchConfig, AttentionConfig, HeadConfig, LayerConfig, PositionConfig, RopeScaling, StackConfig
from ..values import percent
from .config import arch_from_hf_config, hf_class
from .errors import HFError, HFImportError
from .files import read_hf_config, tensor_shapes

__all__ = ["spec_from_arch", "spec_from_config", "spec_from_hf", "import_hf_main", "default_model_name"]


# --- values ---------------------------------------------------------------------------


def _int(n: int) -> str:
    return f"{n:_}" if abs(n) >= 10_000 else str(n)


def _float(x: float) -> str:
    """Shortest text that reads back as the same float: 1e-05 -> 1e-5, 500000.0 -> 500_000."""
    if not math.isfinite(x):
        raise ValueError(f"{x} cannot be written in a spec")
    if x == int(x) and abs(x) >= 10:
        return _int(int(x))
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], repr(float(x)))


def _scale(scale: str | float) -> str:
    return scale if isinstance(scale, str) else _float(scale)  # Gemma 2 27B: 144 ** -0.5


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _attention(a: AttentionConfig) -> str:
    return f"sliding(window: {_int(a.window)})" if a.kind == "sliding" else a.kind  # type: ignore[arg-type]


def _rope_scaling(s: RopeScaling) -> str:
    if s.kind == "linear":
        return f"linear(factor: {_float(s.factor)})"
    if s.kind == "llama3":
        return (f"llama3(factor: {_float(s.factor)}, low_freq: {_float(s.low_freq)}, high_freq: {_float(s.high_freq)}, "
                f"original_context: {_int(s.original_context)})")
    args = [f"factor: {_float(s.factor)}", f"original_context: {_int(s.original_context)}"]
    if s.kind == "longrope":
        args[:0] = [f"short_factor: {_floats(s.short_factor)}", f"long_factor: {_floats(s.long_factor)}"]
    else:  # yarn: only what differs from transformers' defaults
        args += [f"{key}: {_float(value)}" for key, value, default in (
            ("beta_fast", s.beta_fast, 32.0), ("beta_slow", s.beta_slow, 1.0), ("mscale", s.mscale, None),
            ("mscale_all_dim", s.mscale_all_dim, None)) if value != default]
        if not s.truncate:
            args.append("truncate: false")
    if s.attention_factor is not None:
        args.append(f"attention_factor: {_float(s.attention_factor)}")
    return f"{s.kind}({', '.join(args)})"


def _floats(xs: tuple[float, ...]) -> str:
    return f"[{', '.join(_float(x) for x in xs)}]"


def _position(p: PositionConfig) -> str:
    if p.kind == "rope":
        args = [f"theta: {_float(p.theta)}"]
        if p.scaling is not None:
            args.append(f"scaling: {_rope_scaling(p.scaling)}")
        if p.fraction != 1:
            args.append(f"fraction: {percent(p.fraction)}")
        if p.layout != "half":
            args.append(f"layout: {p.layout}")
        return f"rope({', '.join(args)})"
    if p.kind == "relative":
        return f"relative(buckets: {p.buckets}, max_distance: {p.max_distance})"
    return p.kind


def _head(h: HeadConfig) -> str:
    if h.kind == "lm" and (h.bias or h.softcap is not None):
        args = (["bias: true"] if h.bias else []) + ([f"softcap: {_float(h.softcap)}"] if h.softcap is not None else [])
        return f"lm({', '.join(args)})"  # Gemma 2: lm(softcap: 30.0)
    if h.kind == "mlm":
        return "mlm(transform: true)" if h.transform else "mlm"
    if h.kind == "classifier":
        return f"classifier(classes: {h.classes}, pool: {h.pool})"
    if h.kind == "scalar":
        return f"scalar(pool: {h.pool})"
    return h.kind


def _heads(heads: tuple[HeadConfig, ...]) -> str:
    if not heads:
        return "none"
    if len(heads) == 1:
        return _head(heads[0])
    return "[" + ", ".join(_head(h) for h in heads) + "]"


# --- per-layer keys ---------------------------------------------------------------------

# the keys a `layer a..b { }` block (and a stack block) may override, read off a LayerConfig
_LAYER_KEYS = {
    "heads": lambda L: str(L.heads),
    "kv_heads": lambda L: str(L.kv_heads),
    "head_dim": lambda L: str(L.head_dim),
    "d_ff": lambda L: _int(L.d_ff),
    "attention": lambda L: _attention(L.attention),
    "position": lambda L: _position(L.position),
    "norm": lambda L: L.norm,
    "activation": lambda L: L.activation,
    # `bias` is written from these three (see `_bias_lines`), so that a layer override never
    # needs it: each projection's flag is stated where it differs
    "qkv_bias": lambda L: _bool(L.biased("qkv")),
    "out_bias": lambda L: _bool(L.biased("out")),
    "mlp_bias": lambda L: _bool(L.biased("mlp")),
    "qk_norm": lambda L: _bool(L.qk_norm),
    "attention_softcap": lambda L: "none" if L.attention.softcap is None else _float(L.attention.softcap),
    "dropout": lambda L: _float(L.dropout),
}
_BIAS_KEYS = ("qkv_bias", "out_bias", "mlp_bias")
# LayerConfig fields no override can change: they must agree across the whole model
_UNIFORM = ("d_model", "norm_eps", "norm_bias", "norm_offset", "placement", "parallel", "shared_norm", "moe")


def _residual(layer: LayerConfig) -> str:
    if not layer.parallel:
        return "sequential"
    return "parallel" if layer.shared_norm else "parallel(norms: 2)"


def _mlp(layer: LayerConfig) -> str:
    m = layer.moe
    if m is None:
        return "dense"
    return (f"moe(experts: {m.experts}, top_k: {m.top_k}, shared_experts: {m.shared_experts}, "
            f"router_jitter: {_float(m.router_jitter)}, aux_loss: {_float(m.aux_loss)})")


def _layer_values(layer: LayerConfig) -> dict[str, str]:
    return {key: show(layer) for key, show in _LAYER_KEYS.items()}


def _common(stack: StackConfig) -> dict[str, str]:
    """Each per-layer key's most frequent value in the stack (the first layer's on a tie), so
    that the overrides name the exceptions: `layer 0..1 { attention: sliding(...) }`."""
    rows = [_layer_values(L) for L in stack.layers]
    common = {key: max(dict.fromkeys(r[key] for r in rows), key=[r[key] for r in rows].count) for key in _LAYER_KEYS}
    if any(r["attention_softcap"] == "none" for r in rows):
        # `attention_softcap: none` in an override would keep the cap above it (LMS116): uncapped
        # is the common value wherever a layer is uncapped, and the capped layers override it
        common["attention_softcap"] = "none"
    return common


def _overrides(stack: StackConfig, base: dict[str, str], indent: str) -> list[str]:
    """`layer ... { ... }` lines for the layers that differ from `base`, in the order of their
    first layers. The layers that differ alike are one block when they fall every N layers
    (`layer every 2 from 1`: Gemma 2's global layers), else one block per run of consecutive
    layers (`layer 0..1`). The blocks name disjoint layers, so their order does not matter."""
    diffs = [{k: v for k, v in _layer_values(L).items() if base[k] != v} for L in stack.layers]
    alike: dict[tuple, list[int]] = {}  # the differing values -> the layers that have them
    for i, diff in enumerate(diffs):
        if diff:
            alike.setdefault(tuple(diff.items()), []).append(i)
    blocks = []
    for values, layers in alike.items():
        body = ", ".join(f"{k}: {v}" for k, v in values)
        blocks += [(first, f"{indent}{selector} {{ {body} }}") for first, selector in _selectors(layers, len(diffs))]
    return [line for _, line in sorted(blocks)]


def _selectors(layers: list[int], n_layers: int) -> list[tuple[int, str]]:
    """(first layer, selector) pairs that name exactly `layers` (ascending) of a stack of
    `n_layers`: one periodic selector when there are three or more, evenly spaced and not
    adjacent (`layer every 6 from 5` when the next would be past the stack's end, else
    `layer 2..8 every 3`), else one `layer a..b` per run of consecutive layers."""
    from lmspec.grammar.ast import layer_selector

    steps = {b - a for a, b in zip(layers, layers[1:])}
    if len(layers) >= 3 and len(steps) == 1 and (step := steps.pop()) > 1:
        first, last = layers[0], layers[-1]
        return [(first, layer_selector(first, None if last + step >= n_layers else last, step))]
    runs: list[list[int]] = []
    for i in layers:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [(run[0], layer_selector(run[0], run[-1], 1)) for run in runs]


def _bias_lines(values: dict[str, str], indent: str) -> list[str]:
    """`bias: true` when every projection of the common layer has biases, else `bias: false`
    and the projections that do have them (Qwen2: `qkv_bias: true`)."""
    everywhere = all(values[k] == "true" for k in _BIAS_KEYS)
    lines = [f"{indent}bias: {_bool(everywhere)}"]
    return lines + [f"{indent}{k}: {values[k]}" for k in _BIAS_KEYS if values[k] != _bool(everywhere)]


# --- the model block ---------------------------------------------------------------------


def _off_64(arch: ArchConfig) -> bool:
    """Whether `check` would advise padding a size to a multiple of 64 (LMS081), advice that a
    checkpoint's fixed shapes forbid."""
    from ..rules_models import MULTIPLE_OF_64_FROM

    sizes = [arch.vocab] + [L.d_ff for s in arch.stacks for L in s.layers]
    return any(n >= MULTIPLE_OF_64_FROM and n % 64 for n in sizes)


def spec_from_arch(arch: ArchConfig, *, comment: str | Sequence[str] = ()) -> str:
    """The `.lmspec` text (header, comment, one model block) that lowers to `arch`."""
    stacks = arch.stacks
    if not stacks or not all(s.layers for s in stacks):
        raise ValueError(f"model {arch.name}: every stack needs at least one layer")
    first = stacks[0].layers[0]
    for field in _UNIFORM:
        values = {getattr(L, field) for s in stacks for L in s.layers}
        if len(values) > 1:
            raise ValueError(
                f"model {arch.name}: layers differ in {field} ({sorted(values)}), which lmspec cannot express"
            )
    if len({s.final_norm for s in stacks}) > 1:
        raise ValueError(f"model {arch.name}: the stacks differ in final_norm, which lmspec cannot express")
    if first.norm_offset != arch.norm_offset:
        raise ValueError(f"model {arch.name}: the layers' norm_offset differs from the embedding and head norms', "
                         "which lmspec cannot express")
    if first.norm_bias != arch.norm_bias:
        raise ValueError(f"model {arch.name}: the layers' norm_bias differs from the embedding and head norms', "
                         "which lmspec cannot express")
    if len({L.attention.scale for s in stacks for L in s.layers}) > 1:
        raise ValueError(f"model {arch.name}: layers differ in attention scale, which lmspec cannot express")

    # the model-level keys: what most layers of the (first) stack use; `position`, `norm` and
    # `dropout` also set ArchConfig fields of their own, so those are taken from the arch
    base = _common(stacks[0])
    base.update(position=_position(arch.position), norm=arch.norm, dropout=_float(arch.dropout))
    if any(L.attention.softcap is None for s in stacks for L in s.layers):
        base["attention_softcap"] = "none"  # see `_common`: overrides add caps, never remove one
    lines = [f"  arch: {arch.arch}", f"  vocab: {_int(arch.vocab)}", f"  context: {_int(arch.context)}"]
    if arch.arch != "encoder_decoder":
        lines.append(f"  layers: {stacks[0].n_layers}")
    lines += [
        f"  d_model: {_int(arch.d_model)}",
        f"  heads: {base['heads']}",
        f"  kv_heads: {base['kv_heads']}",
        f"  head_dim: {base['head_dim']}",
        f"  d_ff: {base['d_ff']}",
    ]
    if arch.arch != "encoder_decoder":  # an encoder-decoder states each stack's masking below
        lines.append(f"  attention: {base['attention']}")
    lines += [
        f"  attention_scale: {_scale(first.attention.scale)}",
        *([f"  attention_softcap: {base['attention_softcap']}"] if base["attention_softcap"] != "none" else []),
        # a model whose stacks all have their own learned table (BART) reads no model-level position (LMS134)
        *([f"  position: {base['position']}"] if arch.position.kind != "learned" or arch.shared_positions else []),
        f"  norm: {base['norm']}",
        f"  norm_eps: {_float(first.norm_eps)}",
        f"  norm_bias: {_bool(arch.norm_bias)}",
        *([f"  norm_offset: {_float(arch.norm_offset)}"] if arch.norm_offset else []),  # Gemma: 1
        f"  placement: {first.placement}",
        f"  residual: {_residual(first)}",
        f"  activation: {base['activation']}",
        f"  mlp: {_mlp(first)}",
        *_bias_lines(base, "  "),
        f"  qk_norm: {base['qk_norm']}",
        f"  dropout: {base['dropout']}",
        f"  tie_embeddings: {_bool(arch.tie_embeddings)}",
        f"  segments: {arch.segments}",
        f"  pooler: {_bool(arch.pooler)}",
        f"  embed_norm: {_bool(arch.embed_norm)}",
        f"  embed_scale: {_float(arch.embed_scale)}",
        *([f"  position_offset: {arch.position_offset}"]
          if arch.position.kind == "learned" or any(s.own_positions for s in stacks) else []),
        f"  head_scale: {_float(arch.tied_head_scale)}",
        f"  final_norm: {_bool(stacks[0].final_norm)}",
        f"  head: {_heads(arch.heads)}",
    ]
    if _off_64(arch):
        lines.append('  allow: ["LMS081"]  # the checkpoint fixes these sizes: padded ones would not load')
    if arch.pad_id is not None:
        lines.append(f"  pad_id: {arch.pad_id}")
    if arch.mask_id is not None:
        lines.append(f"  mask_id: {arch.mask_id}")
    if arch.decoder_start_id is not None:
        lines.append(f"  decoder_start_id: {arch.decoder_start_id}")

    if arch.arch == "encoder_decoder":
        for label, stack in (("encoder", arch.encoder), ("decoder", arch.decoder)):
            assert stack is not None
            own = _common(stack)
            keys = [f"layers: {stack.n_layers}", f"attention: {own['attention']}"]
            keys += [f"{k}: {v}" for k, v in own.items() if k != "attention" and v != base[k]
                     and not (k == "position" and stack.own_positions)]
            # BART: the stack's own learned position table and embedding norm
            keys += ["position: learned"] * stack.own_positions + ["embed_norm: true"] * stack.own_embed_norm
            overrides = _overrides(stack, own, "    ")
            if overrides:
                lines.append(f"  {label} {{")
                lines += [f"    {k}" for k in keys] + overrides
                lines.append("  }")
            else:
                lines.append(f"  {label} {{ {', '.join(keys)} }}")
    else:
        lines += _overrides(stacks[0], base, "  ")

    comments = [comment] if isinstance(comment, str) else list(comment)
    head = ["lmspec 1", ""] + [f"# {c}" if c else "#" for c in comments]
    return "\n".join(head + [f"model {arch.name} {{"] + lines + ["}"]) + "\n"


def spec_from_config(config: dict, name: str, *, comment: str | Sequence[str] | None = None) -> str:
    """The `.lmspec` text for a parsed Hugging Face config.json."""
    arch = arch_from_hf_config(config, name)
    if comment is None:
        comment = f"Mirrors the Hugging Face {hf_class(config)} (model_type {config['model_type']})."
    return spec_from_arch(arch, comment=comment)


def default_model_name(directory: str | Path) -> str:
    """An lmspec identifier from a checkpoint's folder name: "Llama-2-7b-hf" -> "llama_2_7b_hf"."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", Path(directory).resolve().name).strip("_").lower() or "model"
    return name if re.match(r"[A-Za-z_]", name) else f"m_{name}"


def spec_from_hf(directory: str | Path, name: str | None = None) -> str:
    """The `.lmspec` text for a local Hugging Face checkpoint directory.

    Only config.json and the safetensors headers are read (the headers settle what the
    config leaves open, such as whether a BertModel kept its pooler); no weight is loaded.
    """
    config = read_hf_config(directory)
    try:
        tensor_names = tensor_shapes(directory).keys()
    except HFImportError:
        tensor_names = None  # no (safetensors) weights: the config alone describes the model
    arch = arch_from_hf_config(config, name or default_model_name(directory), tensor_names=tensor_names)
    source = Path(directory).resolve()
    comment = [
        f"Imported by `lmspec import-hf` from {source}",
        f"Hugging Face {hf_class(config)} (model_type {config['model_type']}); "
        f'the weights load with `init: hf("{source}")` in a train stage.',
    ]
    return spec_from_arch(arch, comment=comment)


def import_hf_main(argv: list[str]) -> int:
    """`lmspec import-hf DIR [--name NAME] [-o FILE]`: print or write the spec of a checkpoint."""
    parser = argparse.ArgumentParser(
        prog="lmspec import-hf",
        description="Write the .lmspec model block of a local Hugging Face checkpoint "
        "(config.json + safetensors). Nothing is downloaded.",
    )
    parser.add_argument("directory", metavar="DIR", help="the checkpoint directory (holds config.json)")
    parser.add_argument("--name", help="the model's name in the spec (default: from DIR)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the spec here instead of printing it")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on bad arguments
        return int(exc.code or 0)
    if args.name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.name):
        print(f"lmspec import-hf: error: --name {args.name!r} is not an identifier", file=sys.stderr)
        return 2
    try:
        text = spec_from_hf(args.directory, args.name)
    except HFError as exc:
        print(f"lmspec import-hf: error: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"lmspec import-hf: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    print(f"lmspec import-hf: wrote {args.output}", file=sys.stderr)
    return 0
