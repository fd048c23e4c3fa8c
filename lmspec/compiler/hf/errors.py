"""The two ways importing a Hugging Face checkpoint can fail.

`HFImportError`: the checkpoint cannot be described in lmspec at all (no config.json, a
model type or option lmspec has no equivalent for, a pickle-only checkpoint).
`HFWeightsError`: the architecture was understood, but the tensors on disk do not fit it.
Its message lists every problem at once, so one read of it is enough to fix a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["HFError", "HFImportError", "HFWeightsError"]


class HFError(Exception):
    """Base class of the errors raised by `lmspec.compiler.hf`."""


class HFImportError(HFError):
    """The checkpoint's configuration or file format cannot be imported."""


class HFWeightsError(HFError):
    """The checkpoint's tensors do not match the lmspec model built from its config.

    `missing`: lmspec parameters with no tensor to fill them, each as "lmspec_name (from HF names)"
    or "lmspec_name (no source)". `unexpected`: checkpoint tensors that nothing consumed.
    `mismatched`: (lmspec name, expected shape, found shape, HF names) for tensors of the wrong shape.
    `wrong_dtype`: (HF name, safetensors dtype) for tensors in none of float64/float32/bfloat16/
    float16 (integers of a quantised checkpoint, fp8 with separate scales, booleans), which a
    copy would turn into other numbers.
    """

    def __init__(
        self,
        directory: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...], tuple[str, ...]]] = (),
        wrong_dtype: Sequence[tuple[str, str]] = (),
    ):
        self.directory = directory
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.wrong_dtype = list(wrong_dtype)
        lines = [f"the tensors in {directory} do not match the model built from its config.json:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): lmspec parameters with no tensor in the checkpoint")
            lines += [f"    {m}" for m in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): checkpoint tensors that no lmspec parameter uses")
            lines += [f"    {u}" for u in self.unexpected]
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}):")
            for name, expected, found, sources in self.mismatched:
                lines.append(
                    f"    {name}: expected {_shape(expected)}, found {_shape(found)} (from {', '.join(sources)})"
                )
        if self.wrong_dtype:
            lines.append(f"  not float64/float32/bfloat16/float16 ({len(self.wrong_dtype)}): a quantised (or fp8) "
                         "checkpoint; import the unquantised float32/bfloat16/float16 weights instead")
            lines += [f"    {name}: {dtype}" for name, dtype in self.wrong_dtype]
        super().__init__("\n".join(lines))


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
