"""Silencing warnings: `allow: ["LMS081"]` in a block, and warnings a checkpoint makes moot.

A warning is silenced when its primary span lies inside the text of a block that allows its
code. Errors are never silenced: a spec that would fail at run time must not pass `check`.
Only codes that are warnings can be allowed; an unknown code or an error code in `allow` is
itself an error (LMS097), so a typo cannot silence nothing while looking as if it did.

Independently of `allow`, LMS081 (a size that is not a multiple of 64) is not reported for a
model whose weights come from a Hugging Face checkpoint (`init: hf("dir")`): the checkpoint
fixes its shapes, and following the advice would make it unloadable (LMS091).
"""

from __future__ import annotations

from lmspec.compiler import schema as S
from lmspec.compiler.schema_check import ValidatedSpec
from lmspec.diagnostics import CODES, Diagnostic, Span, closest

__all__ = ["allow_problems", "silence", "allowable_codes"]

CODES.setdefault("LMS097", "an `allow` that names an unknown code or an error")

#: the warnings whose size advice a checkpoint forbids
_SHAPE_ADVICE = {"LMS081"}


def allowable_codes() -> list[str]:
    """The codes that are warnings, and so may be allowed."""
    return sorted(code for code, text in CODES.items() if text.endswith("(warning)"))


def allow_problems(validated: ValidatedSpec) -> list[Diagnostic]:
    """LMS097 for each `allow` entry that is not a warning code."""
    out = []
    warnings = allowable_codes()
    for name, block in validated.blocks.items():
        resolved = validated.resolved.blocks[name]
        for i, code in enumerate(getattr(block, "allow", ())):
            if code in warnings:
                continue
            span = resolved.span_of(("allow", i))
            if code in CODES:
                out.append(Diagnostic("error", "LMS097", f"{code} is an error ({CODES[code]}); only warnings can be "
                                      "allowed", span, help=f"fix what {code} reports, and remove \"{code}\" from allow"))
            else:
                guess = closest(code, warnings)
                out.append(Diagnostic("error", "LMS097", f"'{code}' is not a warning code of lmspec", span,
                                      help=f'did you mean "{guess}"?' if guess else
                                      "warning codes: " + ", ".join(warnings)))
    return out


def _inside(span: Span | None, block: Span) -> bool:
    return span is not None and span.file == block.file and block.start <= span.start and span.end <= block.end


def _checkpoint_models(validated: ValidatedSpec) -> set[str]:
    """Model blocks that some stage loads from a Hugging Face checkpoint."""
    return {stage.model.model for stage in validated.of_kind("train").values()
            if isinstance(stage, S.TrainSpec) and isinstance(stage.init, S.HFInit)}


def silence(validated: ValidatedSpec | None, diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """`diagnostics` without the warnings the spec allows (see the module docstring)."""
    if validated is None:
        return diagnostics
    quiet: list[tuple[Span, set[str]]] = []
    fixed = _checkpoint_models(validated)
    for name, block in validated.blocks.items():
        codes = set(getattr(block, "allow", ()))
        if name in fixed:
            codes |= _SHAPE_ADVICE
        if codes:
            quiet.append((validated.resolved.blocks[name].span, codes))
    if not quiet:
        return diagnostics
    return [d for d in diagnostics
            if d.is_error or not any(d.code in codes and _inside(d.span, span) for span, codes in quiet)]
