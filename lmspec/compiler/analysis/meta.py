"""The wiring check: build a model on torch's "meta" device (shapes, no storage) and run one
training step's forward and backward, so that shape and wiring errors surface before any
memory is spent, even for a 400B-parameter design.

Running every layer on meta would cost ~25 ms a layer (torch's meta kernels for element-wise
ops and norms are Python), so the forward and backward run a *representative* model: each
stack keeps the first two layers of every distinct layer configuration, in their original
order. Every layer maps (B, T, d) to (B, T, d), so identical layers chain identically and the
representatives exercise every layer kind and every transition between kinds. The full model
is still built, and its parameters compared one by one with `parameter_shapes`.

torch is imported here only, and only when `meta_check` runs and finds no cached result
(`meta_cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
from typing import TYPE_CHECKING, Collection

from lmspec.compiler.arch import ArchConfig, LayerConfig, StackConfig

from . import meta_cache
from .params import parameter_shapes

if TYPE_CHECKING:
    import torch

__all__ = ["meta_check", "meta_pass", "MetaResult", "representative_arch"]

_MAX_LISTED = 6  # names listed in one message before "... and N more"


def representative_arch(arch: ArchConfig) -> tuple[ArchConfig, dict[str, list[int]]]:
    """`arch` with each stack cut to the first two layers of every distinct layer config, and
    for each stack the original index of every kept layer."""
    kept: dict[str, list[int]] = {}
    replaced: dict[str, StackConfig] = {}
    for name in ("encoder", "decoder"):
        stack: StackConfig | None = getattr(arch, name)
        if stack is None:
            continue
        seen: dict[LayerConfig, int] = {}
        indices = []
        for i, layer in enumerate(stack.layers):
            if seen.get(layer, 0) < 2:
                seen[layer] = seen.get(layer, 0) + 1
                indices.append(i)
        kept[name] = indices
        replaced[name] = dataclasses.replace(stack, layers=tuple(stack.layers[i] for i in indices))
    return dataclasses.replace(arch, **replaced), kept


def _listed(names: list[str]) -> str:
    head = ", ".join(names[:_MAX_LISTED])
    return head + (f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _where(exc: BaseException, names: dict[int, str]) -> str:
    """The innermost module of the model whose code was running when `exc` was raised."""
    import traceback

    where = ""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            where = names[id(owner)]
    return where


def _failed(what: str, exc: BaseException, names: dict[int, str] | None = None) -> str:
    """A failed step's message, `<what> failed[ in <module>]: <error>`; the module is looked
    up in `names` when given."""
    where = _where(exc, names) if names else ""
    return f"{what} failed{' in ' + where if where else ''}: {_describe(exc)}"


def _original_name(name: str, kept: dict[str, list[int]]) -> str:
    """decoder.layers.1.mlp.up_proj.weight in the representative model -> the full model's."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] in kept and parts[1] == "layers":
        parts[2] = str(kept[parts[0]][int(parts[2])])
    return ".".join(parts)


def _compare_parameters(arch: ArchConfig, model: torch.nn.Module) -> list[str]:
    """The built model against the analytic parameter list: a difference means the figures
    `lmspec check` prints (parameters, memory) are wrong for this model."""
    expected = {p.name: p.shape for p in parameter_shapes(arch)}
    built = {name: tuple(p.shape) for name, p in model.named_parameters()}
    problems = []
    missing = [n for n in expected if n not in built]
    extra = [n for n in built if n not in expected]
    wrong = [f"{n} {built[n]} (expected {expected[n]})" for n in expected if n in built and built[n] != expected[n]]
    if missing:
        problems.append(f"analysis expects parameters the built model lacks: {_listed(missing)}")
    if extra:
        problems.append(f"the built model has parameters the analysis does not count: {_listed(extra)}")
    if wrong:
        problems.append(f"parameter shapes differ from the analysis: {_listed(wrong)}")
    return problems


def _inputs(arch: ArchConfig, batch: int, seq_len: int, decoder_seq_len: int) -> dict:
    import torch

    def ids(T: int) -> torch.Tensor:
        return torch.empty(batch, T, dtype=torch.long, device="meta")

    inputs: dict = {"input_ids": ids(seq_len)}
    if arch.segments:
        inputs["segment_ids"] = ids(seq_len)
    if arch.arch == "encoder_decoder":
        inputs["decoder_input_ids"] = ids(decoder_seq_len)
    first = arch.encoder if arch.arch == "encoder_decoder" else arch.stacks[0]
    if first is not None and any(layer.attention.kind == "prefix" for layer in first.layers):
        inputs["prefix_lengths"] = torch.empty(batch, dtype=torch.long, device="meta")
    return inputs


def _check_outputs(arch: ArchConfig, out, batch: int, T: int,
                   reads: Collection[str] | None = None) -> tuple[list[str], list]:
    """Each declared head's output, its shape checked; returns (problems, tensors for a loss):
    the outputs named in `reads`, or every head's (the hidden states when there is none)."""
    problems, outputs = [], []
    d, V = arch.d_model, arch.vocab
    expected = {"hidden": (batch, T, d)}
    if arch.head("lm") or arch.head("mlm"):
        expected["logits"] = (batch, T, V)
    if arch.head("nsp"):
        expected["nsp_logits"] = (batch, 2)
    classifier = arch.head("classifier")
    if classifier:
        expected["class_logits"] = (batch, classifier.classes)
    if arch.head("scalar"):
        expected["scores"] = (batch,)
    if reads is None:
        reads = [f for f in expected if f != "hidden"] or ["hidden"]
    for field, shape in expected.items():
        value = getattr(out, field, None)
        if value is None:
            problems.append(f"the model returned no {field}, expected shape {shape}")
        elif tuple(value.shape) != shape:
            problems.append(f"{field} has shape {tuple(value.shape)}, expected {shape}")
        elif field in reads:
            outputs.append(value)
    return problems, outputs


@dataclasses.dataclass
class MetaResult:
    problems: list[str]  # what fails: the model does not build, run or match the analysis
    unreached: list[str]  # parameters (full model's names) that no loss read reaches


def meta_check(
    arch: ArchConfig,
    *,
    batch: int = 2,
    seq_len: int | None = None,
    decoder_seq_len: int | None = None,
    check_unused: bool = True,
) -> list[str]:
    """Problems found by building `arch` on the meta device and running a forward and a
    backward pass of `batch` x `seq_len` tokens (default: the model's context); empty: none.

    Reported: build errors; any difference between the built parameters and
    `parameter_shapes(arch)`; errors in the forward or backward pass, with the module they
    happened in; heads whose outputs are missing or misshapen; and, if `check_unused`,
    parameters no head's loss reaches (they would never train). Never raises for a bad model.
    """
    result = meta_pass(arch, batch=batch, seq_len=seq_len, decoder_seq_len=decoder_seq_len)
    if check_unused and result.unreached:
        return result.problems + [f"parameters no head's loss reaches (they would never train): "
                                  f"{_listed(result.unreached)}"]
    return result.problems


def meta_pass(
    arch: ArchConfig,
    *,
    batch: int = 2,
    seq_len: int | None = None,
    decoder_seq_len: int | None = None,
    reads: Collection[str] | None = None,
) -> MetaResult:
    """`meta_check`'s pass, its findings kept apart: what fails, and which parameters the
    backward pass of a loss over the outputs in `reads` ("logits", "nsp_logits",
    "class_logits", "scores", "hidden"; None: every head's) leaves without a gradient --
    the parameters a stage with those objectives would not train.

    Inside `meta_cache.use_meta_cache()` a result found in the cache is returned without
    importing torch, and a pass that ran to its end is stored there."""
    directory, key = meta_cache.active_directory(), None
    if directory is not None:
        try:
            key = meta_cache.cache_key(arch, batch, seq_len, decoder_seq_len, reads)
            hit = meta_cache.load(directory, key)
        except Exception:  # a bug in the cache is a miss, never a failed check
            key = hit = None
        if hit is not None:
            return MetaResult(*hit)
    try:
        import lmspec.compiler.build  # noqa: F401 - torch, torch.nn and the modules
    except Exception as exc:  # pragma: no cover - torch is a dependency; not cached: it may be fixed
        return MetaResult([f"cannot import torch for the meta check: {_describe(exc)}"], [])
    try:
        with _dynamo_left_unimported():
            result = _meta_pass(arch, batch, seq_len, decoder_seq_len, reads)
    except Exception as exc:  # a bug here must not take `lmspec check` down with it; never cached
        return MetaResult([f"the meta check itself failed: {_describe(exc)}"], [])
    if key is not None:
        meta_cache.store(directory, key, result.problems, result.unreached)
    return result


def _meta_pass(
    arch: ArchConfig, batch: int, seq_len: int | None, decoder_seq_len: int | None, reads: Collection[str] | None
) -> MetaResult:
    from lmspec.compiler.build import build_model

    T = arch.context if seq_len is None else seq_len
    T_dec = T if decoder_seq_len is None else decoder_seq_len
    if batch < 1 or T < 1 or T_dec < 1:
        return MetaResult([f"batch and sequence lengths must be positive, got batch={batch}, seq_len={T}"], [])
    problems: list[str] = []
    if (arch.position.kind == "learned" or any(s.own_positions for s in arch.stacks)) and max(T, T_dec) > arch.context:
        problems.append(f"seq_len {max(T, T_dec)} exceeds the learned position table ({arch.context} positions)")
        T, T_dec = min(T, arch.context), min(T_dec, arch.context)

    try:
        full = build_model(arch, device="meta")
    except Exception as exc:
        return MetaResult(problems + [_failed("building the model", exc)], [])
    problems += _compare_parameters(arch, full)
    del full

    small, kept = representative_arch(arch)
    try:
        model = build_model(small, device="meta")
    except Exception as exc:
        return MetaResult(problems + [_failed("building the model", exc)], [])
    model.train()
    names = {id(m): (name or type(m).__name__) for name, m in model.named_modules()}
    names = {k: _original_name(v, kept) for k, v in names.items()}

    try:
        with _ScalarsOnMeta():
            out = model(**_inputs(arch, batch, T, T_dec))
    except Exception as exc:
        return MetaResult(problems + [_failed("forward pass", exc, names)], [])

    shape_problems, outputs = _check_outputs(arch, out, batch, T_dec if arch.arch == "encoder_decoder" else T, reads)
    problems += shape_problems
    if not outputs:
        return MetaResult(problems, [])
    try:
        loss = sum(o.float().mean() for o in outputs)
        loss.backward()
    except Exception as exc:
        return MetaResult(problems + [_failed("backward pass", exc, names)], [])

    unreached = [_original_name(n, kept) for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return MetaResult(problems, unreached)


@contextlib.contextmanager
def _dynamo_left_unimported():
    """Run the pass without importing torch._dynamo, which would cost ~1.3 s: more than the
    rest of a cold check after torch itself.

    torch's meta kernels for element-wise ops are Python references (torch._refs) wrapped in
    `torch._disable_dynamo`, as is every `TorchDispatchMode.__torch_dispatch__`; the wrapper's
    first call imports torch._dynamo to ask it for `disable(fn)`, and keeps the answer on `fn`.
    While no torch._dynamo is imported nothing can be compiling, so disabling it is calling
    `fn`: a stand-in module answers `disable(fn) = fn`, and on the way out the answers are
    taken back and the stand-in removed, so a later torch.compile in this process wraps those
    functions as it would have. Anything else asked of the stand-in imports the real module."""
    import torch

    if "torch._dynamo" in sys.modules:
        yield
        return
    answered: list = []

    def disable(fn=None, recursive=True, **kwargs):
        if fn is None:  # decorator form, `disable(recursive=False)(fn)`
            return lambda f: disable(f, recursive, **kwargs)
        answered.append(fn)
        return fn

    def real(name: str):
        if sys.modules.get("torch._dynamo") is stand_in:
            del sys.modules["torch._dynamo"]
            vars(torch).pop("_dynamo", None)
        import torch._dynamo as dynamo  # the real one, now that the stand-in is gone

        return getattr(dynamo, name)

    stand_in = types.ModuleType("torch._dynamo", "lmspec's stand-in while a meta pass runs")
    stand_in.disable = disable
    stand_in.__getattr__ = real  # type: ignore[attr-defined]
    sys.modules["torch._dynamo"] = stand_in
    torch._dynamo = stand_in
    try:
        yield
    finally:
        if sys.modules.get("torch._dynamo") is stand_in:
            del sys.modules["torch._dynamo"]
        if vars(torch).get("_dynamo") is stand_in:
            del torch._dynamo
        for fn in answered:
            with contextlib.suppress(AttributeError):
                delattr(fn, "__dynamo_disable")


def _scalars_on_meta_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScalarsOnMeta(TorchDispatchMode):
        """Data-dependent Python scalars (`int(t.max())`, `bool(mask.all())`) cannot be read
        from meta tensors; read them as 0 / False so that value checks (a position beyond the
        table, any padding) take their quiet branch. Shapes never depend on them."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
                return False if args[0].dtype == torch.bool else 0
            return func(*args, **(kwargs or {}))

    return ScalarsOnMeta()


class _ScalarsOnMeta:
    """Context manager wrapper so the dispatch mode class is created only when torch is."""

    def __enter__(self):
        self._mode = _scalars_on_meta_mode()
        return self._mode.__enter__()

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
