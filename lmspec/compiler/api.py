"""The front door of the compiler: every intermediate form, one function each.

    parse        text -> AST                        (lmspec.grammar)
    resolve      AST -> ResolvedSpec                (imports, extends, references, arithmetic)
    validate     ResolvedSpec -> ValidatedSpec      (the schema: keys, types, ranges)
    check        file/text -> CheckReport           (all of the above + design rules + lowered models)
    load_arch    file/text + model name -> ArchConfig

Nothing here imports torch; building modules is `compiler.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmspec.compiler import rules
from lmspec.compiler.allow import allow_problems, silence
from lmspec.compiler.arch import ArchConfig
from lmspec.compiler.resolve import ResolvedSpec, resolve_file, resolve_text
from lmspec.compiler.schema_check import ValidatedSpec, derived_attribute, schema_default, validate_spec
from lmspec.diagnostics import Diagnostic, LmspecError
from lmspec.grammar import parse
from lmspec.grammar.parser import gc_paused

__all__ = ["parse", "resolve", "validate", "check", "check_text", "check_file", "load_arch", "CheckReport"]


@dataclass
class CheckReport:
    """What `lmspec check` knows about a spec."""

    path: str
    sources: dict[str, str]
    diagnostics: list[Diagnostic]
    spec: ValidatedSpec | None = None
    models: dict[str, ArchConfig] = field(default_factory=dict)
    hardware: object = None  # rules_parallel.Hardware: the devices the check was told of, or None

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    def raise_for_errors(self) -> "CheckReport":
        if not self.ok:
            raise LmspecError(self.diagnostics, self.sources)
        return self


def resolve(source: str | Path, *, text: str | None = None, overrides: tuple[str, ...] = ()) -> ResolvedSpec:
    """Resolve a file (or `text`, reported under the name `source`). `overrides` are
    `BLOCK.KEY=VALUE` strings (`lmspec run --set`), applied before evaluation and checked as
    the spec is."""
    if text is not None:
        return resolve_text(text, str(source), defaults=schema_default, derived=derived_attribute,
                            overrides=tuple(overrides))
    return resolve_file(source, defaults=schema_default, derived=derived_attribute, overrides=tuple(overrides))


def validate(resolved: ResolvedSpec) -> ValidatedSpec:
    return validate_spec(resolved)


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """A block inherited through `extends` is evaluated once per heir: report each problem once."""
    seen, out = set(), []
    for d in diagnostics:
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _hardware(devices: int | None, device_memory: str | None):
    """The devices `check` plans every stage for (`lmspec check --devices N --device-memory 80GB`);
    None: each stage's own `devices:` and `device_memory:`. A ValueError for a bad size."""
    if devices is None and device_memory is None:
        return None
    from lmspec.compiler.rules_parallel import Hardware

    return Hardware(devices, device_memory)


def _check(resolved: ResolvedSpec, hardware=None) -> CheckReport:
    validated = validate(resolved)
    diagnostics = list(validated.diagnostics)
    models: dict[str, ArchConfig] = {}
    if validated.blocks:
        rule_diagnostics, models = rules.check(validated, hardware)
        diagnostics += rule_diagnostics + allow_problems(validated)
    return CheckReport(resolved.root, resolved.sources, _dedupe(silence(validated, diagnostics)), validated, models,
                       hardware)


def check_file(path: str | Path, *, overrides: tuple[str, ...] = (), devices: int | None = None,
               device_memory: str | None = None) -> CheckReport:
    """Check a spec file. `devices` and `device_memory` ("80GB") plan every train stage for that
    many devices of that memory (rl stages: one), in place of the stages' own keys."""
    hardware = _hardware(devices, device_memory)
    with gc_paused():  # a check allocates much and builds no cycles: see parser.gc_paused
        return _check(resolve(path, overrides=overrides), hardware)


def check_text(text: str, path: str = "<string>", *, overrides: tuple[str, ...] = (), devices: int | None = None,
               device_memory: str | None = None) -> CheckReport:
    hardware = _hardware(devices, device_memory)
    with gc_paused():
        return _check(resolve(path, text=text, overrides=overrides), hardware)


def check(source: str | Path, *, devices: int | None = None, device_memory: str | None = None) -> CheckReport:
    """Check a spec given as a path, or as text when it contains a newline or a brace."""
    if isinstance(source, str) and ("\n" in source or "{" in source):
        return check_text(source, devices=devices, device_memory=device_memory)
    return check_file(source, devices=devices, device_memory=device_memory)


def load_arch(source: str | Path, model: str | None = None) -> ArchConfig:
    """The lowered architecture of one model of a spec (the only one when `model` is None).

    Raises `LmspecError` with every diagnostic when the spec has errors."""
    report = check(source).raise_for_errors()
    if model is None:
        if len(report.models) != 1:
            raise ValueError(f"the spec has {len(report.models)} models ({', '.join(report.models)}); name one")
        return next(iter(report.models.values()))
    if model not in report.models:
        raise KeyError(f"no model named '{model}' (models: {', '.join(report.models) or 'none'})")
    return report.models[model]
