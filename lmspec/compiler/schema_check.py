"""Reading resolved blocks into the schema's typed models, with located errors.

pydantic checks types and ranges; before it runs, `_Reader` walks each model's
fields to turn language values into pydantic input (a bare `learned` or a call
`rope(theta: 10k)` into a tagged dict, a block reference into its name) and to
catch what pydantic would report badly: unknown keys, unknown variants and
unknown arguments, each with "did you mean". pydantic's own errors are mapped
back to spans through their `loc`.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from lmspec.compiler import schema as S
from lmspec.compiler.resolve import NoValue, ResolvedBlock, ResolvedSpec, collapse_inherited
from lmspec.compiler.values import CallValue, Combination, FromStage, Ref, Symbol, WithValue, describe
from lmspec.diagnostics import CODES, Diagnostic, Label, Span, closest, did_you_mean
from lmspec.grammar.parser import gc_paused

__all__ = ["ValidatedSpec", "validate_spec", "schema_default", "derived_attribute", "variants_of"]

CODES.setdefault("LMS050", "a block named like a choice of a key that can also refer to it")
CODES.setdefault("LMS098", "a judge key that its kind of judge does not read")


@dataclass
class ValidatedSpec:
    """Every block that passed the schema, typed, beside the resolved spec it came from."""

    resolved: ResolvedSpec
    blocks: dict[str, BaseModel] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def of_kind(self, kind: str) -> dict[str, BaseModel]:
        return {n: b for n, b in self.blocks.items() if self.resolved.blocks[n].kind == kind}

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


# ----------------------------------------------------------------------------- type inspection


def _per_type(fn):
    """Memoise a function of a schema type. The types are fixed; inspecting them again with
    typing.get_origin/get_args for every value was most of the time spent validating a
    large spec. Unhashable types are inspected each time."""
    cache: dict = {}

    @functools.wraps(fn)
    def cached(tp):
        try:
            return cache[tp]
        except KeyError:
            cache[tp] = result = fn(tp)
            return result
        except TypeError:
            return fn(tp)

    return cached


@_per_type
def _unwrap(tp):
    """Strip Annotated and Optional; return (core type, metadata tuple, optional?)."""
    meta, optional = (), False
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            args = typing.get_args(tp)
            tp, meta = args[0], meta + tuple(args[1:])
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) < len(typing.get_args(tp)):
                optional = True
            if len(args) == 1:
                tp = args[0]
                continue
        return tp, meta, optional


@_per_type
def variants_of(tp) -> dict[str, type[S.Variant]] | None:
    """The tag -> class map if `tp` is a union of Variants (or one Variant)."""
    core, _, _ = _unwrap(tp)
    members = typing.get_args(core) if typing.get_origin(core) in (Union, types.UnionType) else (core,)
    out = {}
    for m in members:
        m_core, _, _ = _unwrap(m)
        if isinstance(m_core, type) and issubclass(m_core, S.Variant):
            out[m_core.model_fields["kind"].default] = m_core
    return out or None


@_per_type
def _literal_values(tp) -> tuple | None:
    core, _, _ = _unwrap(tp)
    if typing.get_origin(core) is Literal:
        return typing.get_args(core)
    if _choices_or_number(tp):
        members = [_unwrap(m)[0] for m in typing.get_args(core)]
        return tuple(v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m))
    return None


@_per_type
def _choices_or_number(tp) -> bool:
    """Whether `tp` takes named choices or a number (`attention_scale: none`, `attention_scale: 0.1`)."""
    core, _, _ = _unwrap(tp)
    if typing.get_origin(core) not in (Union, types.UnionType):
        return False
    members = [_unwrap(m)[0] for m in typing.get_args(core)]
    choices = [m for m in members if typing.get_origin(m) is Literal]
    return bool(choices) and all(m in (int, float) for m in members if m not in choices)


@_per_type
def _ref_kinds(tp) -> tuple[str, ...] | None:
    core, meta, _ = _unwrap(tp)
    for m in meta:
        if isinstance(m, S.RefTo):
            return m.kinds
    if typing.get_origin(core) in (Union, types.UnionType):
        for member in typing.get_args(core):
            kinds = _ref_kinds(member)
            if kinds:
                return kinds
    return None


@_per_type
def _list_item(tp):
    core, _, _ = _unwrap(tp)
    if typing.get_origin(core) is list:
        return typing.get_args(core)[0]
    return None


@_per_type
def _model_class(tp):
    core, _, _ = _unwrap(tp)
    if isinstance(core, type) and issubclass(core, BaseModel) and not issubclass(core, S.Variant):
        return core
    return None


@_per_type
def _bare_choices(tp) -> dict[str, bool]:
    """The names a key of type `tp` takes as a choice, each with whether the bare name is a whole
    value (`causal`, `none` of an optional key) or needs arguments (`sliding(window: ...)`)."""
    _, _, optional = _unwrap(tp)
    out = {name: not _required(cls) for name, cls in (variants_of(tp) or {}).items()}
    out.update({v: True for v in _literal_values(tp) or () if isinstance(v, str) and v.isidentifier()})
    if optional:
        out.setdefault("none", True)
    return out


@_per_type
def _takes_model_use(tp) -> bool:
    core, _, _ = _unwrap(tp)
    members = typing.get_args(core) if typing.get_origin(core) in (Union, types.UnionType) else (core,)
    return any(_model_class(m) is S.ModelUse for m in members)


@_per_type
def _takes_score_sum(tp) -> bool:
    """Whether `tp` is a judge's score, which may be a weighted sum of judges (`a + 0.1 * b`)."""
    core, _, _ = _unwrap(tp)
    members = typing.get_args(core) if typing.get_origin(core) in (Union, types.UnionType) else (core,)
    return any(_model_class(m) is S.ScoreSum for m in members)


def _required(cls: type[BaseModel]) -> list[str]:
    return [n for n, info in cls.model_fields.items() if n != "kind" and info.is_required()]


def _annotation(info: FieldInfo):
    """The field's type with its Annotated metadata, which pydantic moves into `metadata`."""
    try:
        return _ANNOTATIONS[id(info)][1]
    except KeyError:
        refs = [m for m in info.metadata if isinstance(m, S.RefTo)]
        tp = Annotated[(info.annotation, *refs)] if refs else info.annotation
        _ANNOTATIONS[id(info)] = (info, tp)  # the FieldInfo is kept alive, so its id stays its own
        return tp


_ANNOTATIONS: dict[int, tuple] = {}


@functools.lru_cache(maxsize=None)
def _spec_keys(model: type[BaseModel]) -> dict[str, str]:
    """Spec key -> pydantic field name (fields may have an alias, e.g. `class`)."""
    return {info.alias or name: name for name, info in model.model_fields.items()}


def _field_name(model: type[BaseModel], key: str) -> str | None:
    """The pydantic field for a spec key."""
    return _spec_keys(model).get(key)


def _keys(model: type[BaseModel]) -> list[str]:
    return list(_spec_keys(model))


class _Problem(Exception):
    def __init__(self, code: str, message: str, path: tuple, help: str | None = None, key: bool = False,
                 labels: list[Label] | None = None):
        self.code, self.message, self.path, self.help, self.key = code, message, path, help, key
        self.labels = labels or []


# ----------------------------------------------------------------------------- reading


class _Reader:
    """Language values -> pydantic input for one block, collecting problems."""

    def __init__(self, block: ResolvedBlock, blocks: dict[str, ResolvedBlock]):
        self.block, self.blocks = block, blocks
        self.problems: list[_Problem] = []
        self.unknown: list[tuple] = []  # paths whose value failed to resolve (already reported)

    def read_model(self, model: type[BaseModel], data: dict, path: tuple) -> dict:
        out = {}
        keys = _keys(model)
        if _LAYER_RANGE in data:  # a layer override: its range comes from `layer a..b`, not from keys
            data = dict(data)
            out["first"], out["last"], out["every"] = data.pop(_LAYER_RANGE)
            keys = [k for k in keys if k not in out]
        for key, value in data.items():
            name = _field_name(model, key)
            if name is None or key not in keys:
                self.problems.append(_Problem(
                    "LMS041", f"unknown key '{key}' in {self._where(path)}", path + (key,),
                    did_you_mean(key, keys) or f"valid keys: {', '.join(keys)}", key=True))
                continue
            info: FieldInfo = model.model_fields[name]
            if value is None:  # resolution failed and said why; do not pile a type error on top
                self.unknown.append(path + (key,))
                continue
            try:
                out[key] = self.read(_annotation(info), value, path + (key,), key)
            except _Problem as p:
                self.problems.append(p)
        return out

    def _where(self, path: tuple) -> str:
        inner = [p for p in path if isinstance(p, str)]
        where = f"{self.block.kind} '{self.block.name}'"
        if inner and inner[0] != "layer":  # a nested block: `encoder { }`
            where = f"'{inner[0]}' of {where}"
        if "layer" in inner:
            where = f"a layer override of {where}"
        return where

    def read(self, tp, value: Any, path: tuple, key: str) -> Any:
        if value is None:
            return None
        core, meta, optional = _unwrap(tp)
        if isinstance(value, Ref) and not _takes_score_sum(tp):  # a score reads judge blocks: judge_score
            value = self.shadowed(tp, value, path, key)

        # `none` is how a spec says "no value" for an optional key
        if optional and isinstance(value, Symbol) and value.name == "none":
            item = _list_item(core)
            variants = variants_of(item if item is not None else tp)
            if not variants or "none" not in variants:  # else `none` is a variant, e.g. `head: none`
                return None

        # special structured keys
        if typing.get_origin(core) is list and _model_class(_list_item(core)) is S.ObjectiveTerm:
            return self.objective(value, path)
        if _takes_score_sum(tp):
            return self.judge_score(value, path, tp)
        if _model_class(core) is S.ModelUse:
            return self.model_use(value, path, tp)
        if typing.get_origin(core) in (Union, types.UnionType) and any(
                _model_class(m) is S.ModelUse for m in typing.get_args(core)):
            variants = variants_of(tp)
            name = getattr(value, "name", None) if isinstance(value, (Symbol, CallValue)) else None
            if variants and name in variants and not (isinstance(value, Symbol) and value.name in self.blocks):
                return self.variant(variants, value, path, key)
            return self.model_use(value, path, tp)

        kinds = _ref_kinds(tp)
        variants = variants_of(tp)
        if kinds and isinstance(value, Ref):
            if value.kind not in kinds:
                raise _Problem("LMS047", f"'{key}' needs a {' or '.join(kinds)} block, but '{value.name}' is a "
                               f"{value.kind}", path, did_you_mean(value.name, self._names(kinds)) or
                               self._name_help(key, kinds))
            return value.name
        if kinds and isinstance(value, str):
            # `data: "reviews"`: pydantic would take any string as a block name, and the design
            # rules would then look up a block that is missing or of another kind
            also = f", or be {_choices(f'{v}(...)' for v in variants)}" if variants else ""
            raise _Problem("LMS042", f"'{key}' must name a {' or '.join(kinds)} block{also}, found {describe(value)}",
                           path, f"write `{key}: {value}`, without quotes" if value in self._names(kinds) else
                           did_you_mean(value, self._names(kinds)) or
                           (f'for a checkpoint directory, write `{key}: hf("{value}")`' if "hf" in (variants or ())
                            else self._name_help(key, kinds)))
        if kinds and isinstance(value, Symbol) and not (variants and value.name in variants):
            raise _Problem("LMS023", f"'{value.name}' is not defined", path,
                           did_you_mean(value.name, self._names(kinds)) or
                           f"define a {' or '.join(kinds)} block named '{value.name}'")
        if kinds and not isinstance(value, Symbol) and not (variants and isinstance(value, CallValue)):
            also = f", or be {_choices(f'{v}(...)' for v in variants)}" if variants else ""
            raise _Problem("LMS042", f"'{key}' must name a {' or '.join(kinds)} block{also}, found {describe(value)}",
                           path, self._name_help(key, kinds))

        if variants:
            return self.variant(variants, value, path, key)

        literals = _literal_values(tp)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if literals is not None and not (number and _choices_or_number(tp)):  # a number: pydantic reads it
            # a choice is a bare name (`norm: rmsnorm`); only names that are not identifiers
            # (`builtin("tiny-stories")`) are written as strings
            bare = _bare(literals)
            name = (value.name if isinstance(value, Symbol) else
                    value if isinstance(value, str) and not bare else None)
            if name is None:
                example = literals[0] if bare else f'"{literals[0]}"'
                written = example if path and isinstance(path[-1], int) else f"{key}: {example}"
                choices = _choices([*literals, "a number"] if _choices_or_number(tp) else literals)
                raise _Problem("LMS042", f"'{key}' must be one of {choices}, found {describe(value)}", path,
                               isinstance(value, str) and _unquoted(key, path, value, literals) or f"e.g. `{written}`")
            if name not in literals:
                raise _Problem("LMS044", f"unknown {key} '{name}'", path,
                               did_you_mean(name, literals) or f"choose one of {_choices(literals)}")
            return name

        item = _list_item(tp)
        if item is not None:
            if variants_of(item) and not isinstance(value, list):
                value = [value]  # `head: scalar` is a one-element list of heads
                # ... whose errors pydantic places under item 0: give those paths the spans
                for table in (self.block.value_spans, self.block.key_spans):
                    _alias_subtree(table, path, (0,))
            if not isinstance(value, list):
                choices = _literal_values(item)
                example = (choices[0] if _bare(choices) else f'"{choices[0]}"') if choices else (
                    '"..."' if _unwrap(item)[0] is str else "...")
                quoted = isinstance(value, str) and choices and _bare(choices) and value.strip() in choices
                raise _Problem("LMS042", f"'{key}' must be a list, found {describe(value)}", path,
                               f"write `{key}: [{value.strip()}]`, without quotes" if quoted else
                               f"write a list, e.g. `{key}: [{example}]`")
            return [self.read(item, v, path + (i,), key) for i, v in enumerate(value)]

        model = _model_class(tp)
        if model is not None:
            if not isinstance(value, dict):
                raise _Problem("LMS042", f"'{key}' is a nested block, found {describe(value)}", path,
                               f"write `{key} {{ ... }}`")
            return self.read_model(model, value, path)

        if isinstance(value, (Symbol, Ref, CallValue, Combination, FromStage, WithValue)):
            expected = _expected(tp)
            names = list(self.block.fields) + list(self.blocks)
            # a bare name where a number belongs (`kv_heads: hedas`, `d_ff: 4 * d_modle`) can
            # only have been meant as a reference: it names nothing
            symbols = ([value] if isinstance(value, Symbol) else
                       [t for _, t in value.terms if isinstance(t, Symbol)] if isinstance(value, Combination) else [])
            if isinstance(value, Symbol) and value.name == "none" and core in (int, float, bool):
                raise _Problem("LMS042", f"'{key}' must be {expected}, found none", path,
                               f"'{key}' cannot be none: {_type_help(key, path, core, value)}")
            refs = [t for _, t in value.terms if isinstance(t, Ref)] if isinstance(value, Combination) else []
            if refs and core in (int, float):  # `vocab: 2 * tok`: resolution kept it as a sum, in case of objectives
                raise _Problem("LMS027", f"cannot compute with the {refs[0].kind} block '{refs[0].name}'", path,
                               f"arithmetic works on numbers: write `{refs[0].name}.KEY` to read one of its values")
            if symbols and core in (int, float):
                name = symbols[0].name
                raise _Problem("LMS023", f"'{name}' is not defined", path,
                               did_you_mean(name, [n for n in names if n != name]) or f"'{key}' must be {expected}")
            hint = (did_you_mean(value.name, [n for n in names if n != value.name])
                    if isinstance(value, Symbol) else None)
            raise _Problem("LMS042", f"'{key}' must be {expected}, found {describe(value)}", path,
                           hint or _type_help(key, path, core, value))
        # pydantic's lax mode reads true as 1, 1 as true and "256" as 256; in a spec they are
        # different things. (An integer is a number, and a whole number such as `1e3` an integer.)
        if (core in (int, float) and isinstance(value, bool)) or (
                core is bool and isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise _Problem("LMS042", f"'{key}' must be {_expected(tp)}, found {describe(value)}", path,
                           _type_help(key, path, core, value))
        if core in (int, float, bool) and isinstance(value, str):
            if core is bool:
                help = (_unquoted(key, path, value, ("true", "false"), strict=True) or
                        f"write `{key}: true` or `{key}: false`")
            else:
                help = _unquoted(key, path, value) or _type_help(key, path, core, value)
            raise _Problem("LMS042", f"'{key}' must be {_expected(tp)}, found {describe(value)}", path, help)
        return value

    def _names(self, kinds) -> list[str]:
        return [n for n, b in self.blocks.items() if b.kind in kinds]

    def _name_help(self, key: str, kinds) -> str:
        names = self._names(kinds)
        return (f"name one of the {' or '.join(kinds)} blocks, e.g. `{key}: {names[0]}`" if names else
                f"define a {' or '.join(kinds)} block and write its name here")

    def shadowed(self, tp, value: Ref, path: tuple, key: str) -> Any:
        """A block named like a choice of the key (`tokenizer bytes { kind: bytes }`): resolution
        reads the name as the block, but where the key takes no reference to a block of that
        kind, the choice is what it can mean. Where it takes both, the spec is ambiguous."""
        choices = _bare_choices(tp)
        if value.name not in choices:
            return value
        kinds = _ref_kinds(tp) or ()
        takes_model = value.kind == "model" and _takes_model_use(tp)
        if value.kind not in kinds and not takes_model:
            return Symbol(value.name)
        if not choices[value.name]:  # the choice needs arguments, so the bare name is the block
            return value
        block = self.blocks[value.name]
        raise _Problem("LMS050", f"'{key}: {value.name}' is ambiguous: the {value.kind} block '{value.name}' "
                       f"shadows the choice {value.name}", path,
                       f"rename the {value.kind} block '{value.name}' (and the references to it)",
                       labels=[Label(block.name_span, f"the {value.kind} '{value.name}' is defined here")])

    def variant(self, variants: dict, value: Any, path: tuple, key: str) -> dict:
        if isinstance(value, Symbol):
            name, args, kwargs, target = value.name, (), {}, None
        elif isinstance(value, CallValue):
            name, args, kwargs, target = value.name, value.args, dict(value.kwargs), value.target
        else:
            raise _Problem("LMS042", f"'{key}' must be one of {_choices(variants)}, found {describe(value)}", path,
                           self.variant_help(variants, value, path, key))
        if name not in variants:
            raise _Problem("LMS044", f"unknown {key} '{name}'", path,
                           did_you_mean(name, variants) or f"choose one of {_choices(variants)}")
        cls = variants[name]
        params = [n for n in cls.model_fields if n != "kind"]
        data: dict[str, Any] = {"kind": name}
        ref_fields = [n for n in params if _ref_kinds(_annotation(cls.model_fields[n])) or n == "data"]
        if target is not None:
            if not ref_fields:
                raise _Problem("LMS042", f"'{name}' is not a method of {describe(target)}", path,
                               f"write `{key}: {self.variant_form(name, cls)}`")
            data[ref_fields[0]] = target  # a Ref (or a Symbol that names nothing): `read` checks its kind
            params = [p for p in params if p != ref_fields[0]]
        if len(args) > len(params):
            raise _Problem("LMS046", f"{name}(...) takes at most {len(params)} positional argument"
                           f"{'s' * (len(params) != 1)}, found {len(args)}", path,
                           f"arguments: {', '.join(_keys_of(cls, params)) or 'none'}")
        for i, (p, a) in enumerate(zip(params, args)):
            spec_key = cls.model_fields[p].alias or p
            self._alias_span(path + (i,), path + (spec_key,))
            data[spec_key] = a
        for k, v in kwargs.items():
            if _field_name(cls, k) is None or k == "kind":
                choices = _keys_of(cls, [n for n in cls.model_fields if n != "kind"])
                raise _Problem("LMS046", f"{name}(...) has no argument '{k}'", path + (k,),
                               did_you_mean(k, choices) or (f"arguments: {', '.join(choices)}" if choices
                                                            else f"{name} takes no arguments"), key=True)
            if k in data:
                raise _Problem("LMS046", f"argument '{k}' of {name}(...) is given twice", path + (k,),
                               "give each argument once: by position or by name")
            data[k] = v
        out = {}
        for k, v in data.items():
            fname = _field_name(cls, k) or k
            out[k] = v if k == "kind" else self.read(_annotation(cls.model_fields[fname]), v, path + (k,), k)
        return out

    def variant_form(self, name: str, cls, argument: str | None = None) -> str:
        """A variant as a spec writes it, whole: `causal`, `builtin("tiny-stories")`,
        `sliding(window: ...)`, `stories.prefixes()`; `argument` fills its one required string."""
        args, target = [], ""
        for field_name in _required(cls):
            tp = _annotation(cls.model_fields[field_name])
            kinds = _ref_kinds(tp)
            if kinds:  # a method of a block: `stories.prefixes()`
                target = next(iter(self._names(kinds)), kinds[0].upper()) + "."
                continue
            literals = _literal_values(tp)
            if literals:
                args.append(f'"{argument if argument in literals else literals[0]}"')
            elif _unwrap(tp)[0] is str:  # a path: `hf("...")`
                args.append(f'"{argument if argument is not None else "..."}"')
            elif typing.get_origin(_unwrap(tp)[0]) is list:  # `longrope(short_factor: [...])`
                args.append(f"{cls.model_fields[field_name].alias or field_name}: [...]")
            else:
                args.append(f"{cls.model_fields[field_name].alias or field_name}: ...")
        return f"{target}{name}({', '.join(args)})" if args or target else name

    def variant_help(self, variants: dict, value: Any, path: tuple, key: str) -> str:
        """The help for a value that is no variant: a quoted choice unquoted, a string that a
        variant takes as its argument put in it (`builtin("tiny-stories")`, `text("a.txt")`),
        else an example that is itself a valid value."""
        def write(form: str) -> str:
            return form if path and isinstance(path[-1], int) else f"{key}: {form}"  # a list item

        if isinstance(value, str):
            word = value.strip()
            if word in variants:
                form = self.variant_form(word, variants[word])
                return f"write `{write(form)}`, without quotes" if form == word else f"write `{write(form)}`"
            named = {lit: name for name, cls in variants.items() for f in _required(cls)
                     for lit in _literal_values(_annotation(cls.model_fields[f])) or ()}
            if word in named:
                return f"write `{write(self.variant_form(named[word], variants[named[word]], word))}`"
            near = closest(word, named)
            paths = [n for n, cls in variants.items() if [_unwrap(_annotation(cls.model_fields[f]))[0]
                                                          for f in _required(cls)] == [str]
                     and not _ref_kinds(_annotation(cls.model_fields[_required(cls)[0]]))]
            if near is not None and not any(c in word for c in "/\\."):
                return f"did you mean `{write(self.variant_form(named[near], variants[named[near]], near))}`?"
            if paths:
                by_suffix = [n for n in paths if word.lower().endswith(f".{n}")]
                name = (by_suffix or paths)[0]
                return f"for a path, write `{write(self.variant_form(name, variants[name], word))}`"
        plain = [n for n, cls in variants.items() if not _required(cls)]
        name = plain[0] if plain else next(iter(variants))
        return f"e.g. `{write(self.variant_form(name, variants[name]))}`"

    def _alias_span(self, src: tuple, dst: tuple) -> None:
        if src in self.block.value_spans:
            self.block.value_spans.setdefault(dst, self.block.value_spans[src])

    def objective(self, value: Any, path: tuple) -> list:
        terms = value.terms if isinstance(value, Combination) else ((1.0, value),)
        variants = variants_of(S.Objective)
        for i in range(len(terms)):  # pydantic reports ("objective", i, "objective", arg)
            _alias_subtree(self.block.value_spans, path, (i, "objective"))
        out = []
        for w, t in terms:  # read every term, so that one bad term does not hide another's error
            if isinstance(t, Ref) and t.name in variants:  # no objective refers to a block
                t = Symbol(t.name)
            try:
                out.append({"weight": w, "objective": self.variant(variants, t, path, "objective")})
            except _Problem as p:
                self.problems.append(p)
        return out  # pydantic still checks the good terms' ranges

    def judge_score(self, value: Any, path: tuple, tp) -> dict:
        """A judge's `score`: a variant (`probability(class: 1)`, `contains("happy")`), or a
        weighted sum of judge blocks and rules (`sentiment + 0.1 * contains("happy")`; a lone judge
        block is a sum of one term)."""
        variants = variants_of(tp)
        if isinstance(value, Ref) and value.kind != "judge" and value.name in variants:
            value = Symbol(value.name)  # a block named like a choice of a key that takes no such block
        if not isinstance(value, Combination) and not (isinstance(value, Ref) and value.kind == "judge"):
            if isinstance(value, Symbol) and value.name not in variants:
                near = closest(value.name, [*variants, *self._names(("judge",))])
                if near is not None and near not in variants:  # a misspelt judge
                    raise _Problem("LMS023", f"'{value.name}' is not defined", path, f"did you mean '{near}'?")
            return self.variant(variants, value, path, "score")
        terms = value.terms if isinstance(value, Combination) else ((1.0, value),)
        rules = {k: v for k, v in variants.items() if k in _RULE_SCORES}
        for i in range(len(terms)):  # pydantic reports ("score", "terms", i, "judge", arg)
            _alias_subtree(self.block.value_spans, path, ("terms", i, "judge"))
        out = []
        for w, t in terms:  # read every term, so that one bad term does not hide another's error
            try:
                out.append({"weight": w, "judge": self._score_term(t, rules, path)})
            except _Problem as p:
                self.problems.append(p)
        return {"terms": out}

    def _score_term(self, term: Any, rules: dict, path: tuple) -> Any:
        """One term of a sum of scores: a judge block's name, or a rule as a variant dict."""
        if isinstance(term, Ref):
            if term.name in rules:  # `length` names both a rule and a block
                raise _Problem("LMS050", f"'{term.name}' in a score is ambiguous: the {term.kind} block "
                               f"'{term.name}' shadows the rule {term.name}", path,
                               f"rename the {term.kind} block '{term.name}' (and the references to it)",
                               labels=[Label(self.blocks[term.name].name_span,
                                             f"the {term.kind} '{term.name}' is defined here")])
            if term.kind != "judge":
                raise _Problem("LMS047", f"a score adds judges and rules, but '{term.name}' is a {term.kind}", path,
                               did_you_mean(term.name, self._names(("judge",))) or
                               "name a judge block, or a rule: length, contains(\"...\"), regex(\"...\")")
            return term.name
        name = term.name if isinstance(term, (Symbol, CallValue)) else None
        if name in _MODEL_SCORES:
            raise _Problem("LMS044", f"{name} reads a model, so it cannot be a term of a sum", path,
                           f"write a judge block with `model: ...` and `score: {name}`, and add that judge")
        if isinstance(term, Symbol) and name not in rules:
            raise _Problem("LMS023", f"'{name}' is not defined", path,
                           did_you_mean(name, [*self._names(("judge",)), *rules]) or
                           "a term of a score is a judge block or a rule: length, contains(\"...\"), regex(\"...\")")
        return self.variant(rules, term, path, "score")

    def model_use(self, value: Any, path: tuple, tp=None) -> dict:
        out: dict[str, Any] = {}
        while True:
            if isinstance(value, WithValue):
                if value.key != "head":
                    raise _Problem("LMS046", f"`with {value.key}` is not supported; only `with head ...`", path,
                                   "write `MODEL with head KIND`, or a model block that extends MODEL")
                out.setdefault("head", self.read(S.ModelSpec.model_fields["head"].annotation, value.field_value,
                                                 path + ("head",), "head"))
                value = value.value
            elif isinstance(value, FromStage):
                if value.stage.kind not in ("train", "rl"):
                    raise _Problem("LMS047", f"'from' needs a train or rl stage, but '{value.stage.name}' is a "
                                   f"{value.stage.kind}", path,
                                   did_you_mean(value.stage.name, self._names(("train", "rl"))) or
                                   "name the train or rl stage whose weights to use")
                out.setdefault("stage", value.stage.name)
                value = value.value
            else:
                break
        if isinstance(value, Ref):
            if value.kind != "model":
                names = self._names(("model",))
                raise _Problem("LMS047", f"expected a model, but '{value.name}' is a {value.kind}", path,
                               did_you_mean(value.name, names) or
                               (f"name a model block, e.g. `{names[0]}`" if names else "define a model block"))
            out["model"] = value.name
            return out
        if isinstance(value, Symbol):
            raise _Problem("LMS023", f"'{value.name}' is not defined", path,
                           did_you_mean(value.name, self._names(("model",))) or
                           f"define a model block named '{value.name}'")
        names = self._names(("model",))
        if isinstance(value, str) and value in names:
            help = f"write `{value}`, without quotes"
        elif isinstance(value, str) and "hf" in (variants_of(tp) or ()):
            help = f'for a checkpoint directory, write `hf("{value}")`'
        else:
            help = f"name a model block, e.g. `{names[0]}`" if names else "define a model block"
        raise _Problem("LMS042", f"expected a model, found {describe(value)}", path, help)


# the scores a judge reads from its model, and those that read the response alone (a rule)
_MODEL_SCORES = ("probability", "logit", "scalar")
_RULE_SCORES = ("length", "contains", "regex")


def _alias_subtree(table: dict[tuple, Span], path: tuple, inserted: tuple) -> None:
    """Give every span below `path` also at `path + inserted + rest`: where pydantic reports the
    errors of a value the reader wrapped (in a list, in an objective term)."""
    n = len(path)
    for p, span in list(table.items()):
        if p[:n] == path and len(p) > n:
            table.setdefault(path + inserted + p[n:], span)


def _bare(choices) -> bool:
    """Whether these choices are written as bare names (`rmsnorm`), not strings (`"tiny-stories"`)."""
    return all(isinstance(c, str) and c.isidentifier() for c in choices)


_NUMBER_LITERAL = re.compile(r"[+-]?\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?[kMBT%]?")  # the lexer's, signed


def _unquoted(key: str, path: tuple, text: str, choices=None, strict: bool = False) -> str | None:
    """The help for a quoted `text` where a number (`choices` None), a boolean or a choice belongs:
    the value without its quotes, when that is what was meant (the nearest choice unless `strict`)."""
    word = text.strip()
    if choices is None:
        meant = word.removeprefix("+") if _NUMBER_LITERAL.fullmatch(word) else None
    else:
        meant = word if word in choices else None if strict else closest(word, choices)
    if meant is None:
        return None
    written = f"{meant}" if path and isinstance(path[-1], int) else f"{key}: {meant}"  # a list item
    return f"write `{written}`, without quotes"


def _keys_of(cls, names) -> list[str]:
    return [cls.model_fields[n].alias or n for n in names]


def _choices(values) -> str:
    values = list(values)
    return ", ".join(values[:-1]) + (" or " if len(values) > 1 else "") + values[-1] if values else "nothing"


def _type_help(key: str, path: tuple, core, found: Any) -> str | None:
    """What to write for a value of the wrong type, as the spec writes that type."""
    def write(form: str) -> str:
        return f"`{form}`" if path and isinstance(path[-1], int) else f"`{key}: {form}`"  # a list item

    if core is bool:
        return f"write {write('true')} or {write('false')}"
    if core is int:
        return f"write a whole number: {write('N')}"
    if core is float:
        return f"write a number: {write('N')} (a fraction may be written as a percentage, `10%`)"
    if core is str:
        text = found.name if isinstance(found, Symbol) else _show(found) if isinstance(found, (int, float)) else "..."
        return "write it in quotes: " + write(f'"{text}"')
    if core is list or typing.get_origin(core) is list:
        return f"write a list: {write('[...]')}"
    return None


def _expected(tp) -> str:
    core, _, optional = _unwrap(tp)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if core in names:
        return names[core]
    if typing.get_origin(core) in (Union, types.UnionType):
        return " or ".join(names.get(_unwrap(a)[0], "a value") for a in typing.get_args(core))
    return "a value of another type"


# ----------------------------------------------------------------------------- pydantic errors


_TYPE_MESSAGES = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
}
_TYPE_CORES = {"int_type": int, "int_parsing": int, "int_from_float": int, "float_type": float,
               "float_parsing": float, "bool_type": bool, "bool_parsing": bool, "string_type": str, "list_type": list}
_RANGE = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _value_at(data: Any, path: tuple) -> Any:
    for p in path:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _pydantic_diagnostics(err: ValidationError, block: ResolvedBlock, data: dict,
                          reported: set[tuple] = frozenset(),
                          blocks: dict[str, ResolvedBlock] | None = None) -> list[Diagnostic]:
    """pydantic's errors as located diagnostics. A key under a `reported` path (its problem was
    already said, and the reader left it out of `data`) is not also called missing."""
    out = []
    errors = err.errors(include_url=False)
    # choices or a number (`attention_scale`): a number speaks only to the number member
    numbered = {tuple(e["loc"][:-1]) for e in errors if str(e["loc"][-1]).startswith(("constrained-", "float", "int"))}
    for e in errors:
        loc = tuple(e["loc"])
        if loc[:-1] in numbered and str(loc[-1]).startswith("literal[") and isinstance(e.get("input"), (int, float)):
            continue
        path, variant, fits = _strip_tags(loc, data)
        if not fits:
            continue
        key = next((p for p in reversed(path) if isinstance(p, str)), block.name)
        kind, ctx, found = e["type"], e.get("ctx", {}), e.get("input")
        if kind == "missing":
            if any(r[:len(path)] == path for r in reported):
                continue
            span = block.span_of(path[:-1]) if len(path) > 1 else block.name_span
            owner_value = _value_at(data, path[:-1])
            if variant is None and isinstance(owner_value, dict) and "kind" in owner_value:
                variant = owner_value["kind"]  # a variant of no union: `prompts: prefixes(...)`
            if variant is not None:  # `attention: sliding` without its window
                model = S.BLOCK_KINDS.get(block.kind)
                info = _field_at(model, path, data) if model is not None else None
                kinds = _ref_kinds(_annotation(info)) if info is not None else None
                if kinds:  # a method of a block: `stories.prefixes()`
                    names = [n for n, b in (blocks or {}).items() if b.kind in kinds]
                    target = names[0] if names else kinds[0].upper()
                    out.append(Diagnostic("error", "LMS046", f"{variant}(...) needs the {' or '.join(kinds)} block "
                                          f"it reads", span, help=f"write `{target}.{variant}(...)`"))
                    continue
                out.append(Diagnostic("error", "LMS046", f"{variant}(...) needs '{key}'", span,
                                      help=f"write `{variant}({key}: ...)`"))
                continue
            owner = f"'{path[0]}' of " if len(path) > 1 and isinstance(path[0], str) else ""
            model = S.BLOCK_KINDS.get(block.kind)
            info = model.model_fields.get(key) if model is not None and len(path) == 1 else None
            nested = info is not None and _model_class(info.annotation) not in (None, S.ModelUse)
            out.append(Diagnostic("error", "LMS045", f"{owner}{block.kind} '{block.name}' needs '{key}'", span,
                                  help=f"add `{key} {{ ... }}`" if nested else f"add `{key}: ...`"))
            continue
        span = block.span_of(path)
        model = S.BLOCK_KINDS.get(block.kind)
        info = _field_at(model, path, data) if model is not None else None
        default = None if info is None or info.is_required() else info.get_default(call_default_factory=True)
        if kind in _RANGE:
            limit = next(iter(ctx.values()), "?")
            usual = f" (the default is {_show(default)})" if isinstance(default, (int, float)) else ""
            out.append(Diagnostic("error", "LMS043", f"'{key}' must be {_RANGE[kind]} {_show(limit)}, "
                                  f"found {_show(found)}", span,
                                  help=f"use a value {_RANGE[kind]} {_show(limit)}{usual}"))
        elif kind == "string_too_short" and ctx.get("min_length") == 1:  # contains(""), until("")
            out.append(Diagnostic("error", "LMS043", f"'{key}' must not be empty", span,
                                  help=f"write the text between the quotes of '{key}'"))
        elif kind in ("too_short", "too_long"):
            n = ctx.get('min_length', ctx.get('max_length'))
            usual = (f": the default is `{key}: [{', '.join(_show(v) for v in default)}]`"
                     if isinstance(default, list) and len(default) == n else "")
            out.append(Diagnostic("error", "LMS043", f"'{key}' must have {n} items, found {ctx.get('actual_length')}",
                                  span, help=f"give {n} items{usual}"))
        elif kind in _TYPE_MESSAGES:
            core = _TYPE_CORES.get(kind)
            out.append(Diagnostic("error", "LMS042", f"'{key}' must be {_TYPE_MESSAGES[kind]}, found {describe(found)}",
                                  span, help=_type_help(key, path, core, found)))
        else:  # the reader turns away what pydantic would word badly; this is what remains
            out.append(Diagnostic("error", "LMS042", f"'{key}': {e['msg']}", span,
                                  help=f"see what '{key}' takes in docs/language.md (keys of every block kind)"))
    return out


def _strip_tags(loc: tuple, data: Any) -> tuple[tuple, str | None, bool]:
    """pydantic's error location without the variant tags it inserts, e.g.
    ('attention', 'sliding', 'window') -> ('attention', 'window'), and the tag just before
    the last element, if any. A tag is told from a key by walking the data: it is the `kind`
    of the dict reached, not one of its keys (DataSpec has a key `text`, and `text` is also
    the tag of a source). Third: whether the error belongs to the value as written: pydantic
    tries every member of a union such as `init` (a stage name or hf("dir")) and reports each
    failure under the member's name (`str`, `HFInit`); only the member shaped like the value
    speaks for it."""
    path, tag_before_last, cur = [], None, data
    for i, p in enumerate(loc):
        if isinstance(cur, dict) and p not in cur and cur.get("kind") == p:
            if i == len(loc) - 2:
                tag_before_last = p
            continue
        if i > 0 and isinstance(p, str) and not (isinstance(cur, dict) and p in cur) and _union_member(p):
            if not _member_fits(p, cur):
                return tuple(path), tag_before_last, False
            continue
        path.append(p)
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            cur = None
    return tuple(path), tag_before_last, True


_SCALAR_MEMBERS = ("str", "int", "float", "bool", "none")


def _union_member(tag: str) -> bool:
    """Whether a loc element names a union member (keys of the schema are snake_case)."""
    return tag in _SCALAR_MEMBERS or tag.startswith(("list[", "literal[", "function-", "constrained-")) or (
        isinstance(getattr(S, tag, None), type) and issubclass(getattr(S, tag), BaseModel))


def _member_fits(tag: str, value: Any) -> bool:
    cls = getattr(S, tag, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        return not isinstance(value, dict)
    if not isinstance(value, dict):
        return False
    kind = cls.model_fields["kind"].default if "kind" in cls.model_fields else None
    return value.get("kind") == kind


def _field_at(model: type[BaseModel], path: tuple, data: Any) -> FieldInfo | None:
    """The schema field that a value path (pydantic's, its tags stripped) leads to, through
    nested blocks, lists and variants; None when the path leaves the schema."""
    info, tp, cur = None, None, data
    for p in path:
        if tp is not None and isinstance(p, int):  # an item of the list the last field holds
            tp = _list_item(tp)
            cur = cur[p] if isinstance(cur, list) and 0 <= p < len(cur) else None
            if tp is None:
                return None
            continue
        if tp is not None:  # a key of the value the last field holds
            model = _model_class(tp)
            if model is None and isinstance(cur, dict):
                model = ((variants_of(tp) or {}).get(cur["kind"]) if "kind" in cur else
                         S.ModelUse if _takes_model_use(tp) else None)
            if model is None:
                return None
        if not isinstance(p, str) or (name := _field_name(model, p)) is None:
            return None
        info = model.model_fields[name]
        tp, cur = _annotation(info), cur.get(p) if isinstance(cur, dict) else None
    return info


def _show(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- judge keys


# the keys only an LM judge reads (`model: hf(...)` or `openai(...)`)
_LM_JUDGE_KEYS = ("task", "prompt", "principles", "principles_mode")


def _judge_keys(block: ResolvedBlock, data: dict) -> list[_Problem]:
    """LMS045 and LMS098: which keys a judge takes depends on what it is (docs/judges.md). A
    model judge scores with its model's head; a rule or a sum of judges has no model; an LM judge
    reads its label from the answer tokens and takes task, prompt and principles. A key another
    kind of judge reads would be ignored, so it is an error here, before any rule reads the judge."""
    if any(k in block.fields and k not in data for k in ("model", "score")):
        return []  # the value failed, and said why
    model, score = data.get("model"), data.get("score")
    what = None if model is None else model.get("kind", "model")  # a model use has no tag
    rule = None if score is None else "sum" if "terms" in score else score["kind"]  # None: the default
    if what in ("hf", "openai"):
        return [] if score is None else [_Problem(
            "LMS098", f"judge '{block.name}' is an LM judge ({what}(...)): its label comes from the answer tokens, so "
            "'score' would be ignored", ("score",), "remove `score:`; `task: rate` asks for a 1-10 rating of each "
            "response, `task: compare` (the default) which of two is better", key=True)]
    out = []
    if what == "model" and rule in (*_RULE_SCORES, "sum"):
        reads = ("adds the scores of other judges" if rule == "sum" else
                 f"scores with the rule {rule}, which reads the response alone")
        out.append(_Problem("LMS098", f"judge '{block.name}' {reads}, so its model '{model['model']}' would be "
                            "ignored", ("model",), "remove `model:`; or score with the model's head: "
                            "probability(class: 1), logit(class: 1) or scalar",
                            labels=[Label(block.span_of(("score",)), "the score")]))
    if what is None and rule in (None, *_MODEL_SCORES):
        reads = f"scores with {rule}, which reads a model's head" if rule else "has neither a model nor a rule"
        out.append(_Problem("LMS045", f"judge '{block.name}' needs 'model': it {reads}", ("score",) if rule else (),
                            'add `model: MODEL from STAGE` (a classifier or reward model the spec trains), '
                            '`hf("dir")` or `openai(url: "...", model: "...")`; or score with a rule: '
                            '`score: length`, `contains("...")` or `regex("...")`'))
    kind = ("a model judge" if what == "model" else "a sum of judges" if rule == "sum" else
            f"a rule ({rule})" if rule in _RULE_SCORES else "no LM judge")
    out += [_Problem("LMS098", f"'{key}' is read by LM judges only, and judge '{block.name}' is {kind}", (key,),
                     f'remove `{key}`, or make the judge an LM judge: `model: hf("dir")` or `openai(url: "...", '
                     'model: "...")`', key=True)
            for key in _LM_JUDGE_KEYS if key in data]
    return out


# ----------------------------------------------------------------------------- block data


# The range of a layer override travels under a key no spec can write, so that `layer 0 { last: 5 }`
# is an unknown key and not a silent change of the range.
_LAYER_RANGE = "layer a..b"


def block_data(block: ResolvedBlock) -> dict:
    """A resolved block as the nested dict the schema reads."""
    data = dict(block.fields)
    for name, sub in block.nested.items():  # a nested block has no nested blocks of its own
        data[name] = block_data(sub)
    if block.layers:
        data["layer"] = [{**l.fields, _LAYER_RANGE: (l.first, l.last, l.every)} for l in block.layers]
    return data


def validate_block(block: ResolvedBlock, blocks: dict[str, ResolvedBlock]) -> tuple[BaseModel | None, list[Diagnostic]]:
    model = S.BLOCK_KINDS.get(block.kind)
    if model is None:
        return None, [Diagnostic("error", "LMS040", f"unknown block kind '{block.kind}'", block.kind_span,
                                 help=did_you_mean(block.kind, S.BLOCK_KINDS) or
                                 f"block kinds: {', '.join(S.BLOCK_KINDS)}")]
    reader = _Reader(block, blocks)
    data = reader.read_model(model, block_data(block), ())
    if block.kind == "judge":
        reader.problems += _judge_keys(block, data)
    diagnostics = [Diagnostic("error", p.code, p.message, block.span_of(p.path, key=p.key), labels=p.labels,
                              help=p.help) for p in reader.problems]
    try:
        typed = model.model_validate(data)
    except ValidationError as err:
        known = {d.span for d in diagnostics}
        # keys already reported are absent from `data`; pydantic would call them missing
        reported = {p.path for p in reader.problems if p.path} | {p for p in reader.unknown if p}
        for d in _pydantic_diagnostics(err, block, data, reported, blocks):
            if d.code == "LMS045" and block.incomplete:  # the keys may be in the block it failed to extend
                continue
            if d.span not in known or d.code != "LMS042":
                diagnostics.append(d)
        return None, diagnostics
    return (typed if not diagnostics else None), diagnostics


def validate_spec(resolved: ResolvedSpec) -> ValidatedSpec:
    out = ValidatedSpec(resolved, diagnostics=list(resolved.diagnostics))
    with gc_paused():  # see gc_paused: one typed model per block, no cycles
        for name, block in resolved.blocks.items():
            typed, diagnostics = validate_block(block, resolved.blocks)
            out.diagnostics += diagnostics
            if typed is not None:
                out.blocks[name] = typed
    out.diagnostics = collapse_inherited(out.diagnostics, resolved.blocks)
    return out


# ----------------------------------------------------------------------------- resolver hooks


def _divide(a, b):
    """`a / b` as the language computes it: an integer when exact; None for a zero divisor
    (whose own key is out of range, and says so)."""
    if b == 0:
        return None
    return a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b


def _of_numbers(fn):
    """`fn` over numbers; None for anything else (its own key reports the wrong type)."""
    def computed(*values):
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return fn(*values) if ok else None
    return computed


def _choice(value) -> str | None:
    """The choice a value names; a block named like one (`model decoder`) is read as the choice
    where the key takes no block (see `_Reader.shadowed`)."""
    return value.name if isinstance(value, (Symbol, Ref)) else None


# Defaults that depend on other keys, as docs/language.md writes them; `lower.py` applies the
# same ones to typed models, and a test holds the two together. Scope kind -> key -> (the default
# as the docs write it, the keys it reads, how it follows from their values).
_DERIVED_DEFAULTS: dict[str, dict[str, tuple[str, tuple[str, ...], Any]]] = {
    "model": {
        "kv_heads": ("heads", ("heads",), _of_numbers(lambda heads: heads)),
        "head_dim": ("d_model / heads", ("d_model", "heads"), _of_numbers(_divide)),
        "d_ff": ("4 * d_model", ("d_model",), _of_numbers(lambda d_model: 4 * d_model)),
        "attention": ("causal for decoders, bidirectional for encoders", ("arch",),
                      lambda arch: Symbol("causal" if _choice(arch) == "decoder" else "bidirectional")),
        "final_norm": ("true for pre-norm and sandwich", ("placement",),
                       lambda placement: _choice(placement) in ("pre", "sandwich")),
        "head": ("lm (mlm for encoders)", ("arch",), lambda arch: Symbol("mlm" if _choice(arch) == "encoder" else "lm")),
        # the projections' own biases follow `bias` unless written
        "qkv_bias": ("bias", ("bias",), lambda bias: bias),
        "out_bias": ("bias", ("bias",), lambda bias: bias),
        "mlp_bias": ("bias", ("bias",), lambda bias: bias),
    },
    # the stacks of an encoder-decoder: its decoder is causal whatever the model says
    "model.encoder": {"attention": ("bidirectional", (), lambda: Symbol("bidirectional"))},
    "model.decoder": {"attention": ("causal", (), lambda: Symbol("causal"))},
}

# Defaults known only once the spec is checked: scope kind -> key -> (the default, what to write).
_LATE_DEFAULTS = {
    "train": {"seq_len": ("the model's context", "write the model's context itself, such as `gpt.context`")},
}


def _nothing(key: str) -> tuple[bool, Any]:
    return False, None


def schema_default(kind: str, key: str, read=_nothing) -> tuple[bool, Any]:
    """(found, value) of the default of `key` read in a scope of `kind` (`model`, or `model.encoder`
    for a nested block, whose keys fall back to the block's), as a spec would write it: a number,
    `layernorm` a name, `learned` a variant. `read(other)` reads another key from the same scope,
    for the defaults that depend on other keys (`kv_heads` = `heads`). Raises NoValue for a key of
    a number or a boolean that has no value to read."""
    block_kind, _, nested = kind.partition(".")
    block_model = S.BLOCK_KINDS.get(block_kind)
    if block_model is None:
        return False, None
    owners = [(block_model, block_kind)]
    if nested and nested in block_model.model_fields:
        nested_model = _model_class(_annotation(block_model.model_fields[nested]))
        if nested_model is not None:
            owners.insert(0, (nested_model, kind))
    infos = [(model.model_fields[name], k) for model, k in owners if (name := _field_name(model, key)) is not None]
    for info, scope_kind in infos:
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if default is not None:
            return True, _spec_value(default, _annotation(info))
        if key in _DERIVED_DEFAULTS.get(scope_kind, {}):
            formula, needs, compute = _DERIVED_DEFAULTS[scope_kind][key]
            values = []
            for other in needs:
                found, value = read(other)
                if not found:
                    raise NoValue(key, formula, other)
                if value is None:  # it failed to resolve, and said why
                    return True, None
                values.append(value)
            return True, compute(*values)
        if key in _LATE_DEFAULTS.get(scope_kind, {}):
            formula, help = _LATE_DEFAULTS[scope_kind][key]
            raise NoValue(key, formula, help=help)
    if infos and _unwrap(_annotation(infos[-1][0]))[0] in (int, float, bool):
        raise NoValue(key)  # a bare name there can only have meant the key, and it has no value
    return False, None


def _spec_value(value: Any, tp) -> Any:
    """A schema default as the value a spec would write for it."""
    if isinstance(value, S.Variant):
        cls = type(value)
        args = tuple((info.alias or name, _spec_value(getattr(value, name), _annotation(info)))
                     for name, info in cls.model_fields.items()
                     if name != "kind" and getattr(value, name) != info.get_default(call_default_factory=True))
        return CallValue(value.kind, kwargs=args) if args else Symbol(value.kind)
    if isinstance(value, list):
        item = _list_item(tp)
        return [_spec_value(v, item) for v in value]
    literals = _literal_values(tp) if isinstance(value, str) else None
    if literals is not None and _bare(literals):
        return Symbol(value)
    return value


def derived_attribute(block: ResolvedBlock, attr: str, resolver) -> tuple[bool, Any]:
    """Attributes computed from a block: `tok.vocab_size`."""
    if block.kind == "tokenizer" and attr == "vocab_size":
        kind = block.fields.get("kind")
        specials = block.fields.get("specials", S.TokenizerSpec.model_fields["specials"].default)
        sentinels = block.fields.get("sentinels", 0)
        if not isinstance(specials, list) or not isinstance(sentinels, int):
            return True, None
        # a Ref too: in `tokenizer bytes { kind: bytes }` the kind is the choice (see `_Reader.shadowed`)
        name = kind.name if isinstance(kind, (Symbol, CallValue, Ref)) else None
        call = kind if isinstance(kind, CallValue) else None
        if name == "bytes":  # `bytes` and `bytes()`
            return True, 256 + len(specials) + sentinels
        if name == "bpe":  # `bpe` and `bpe()` have the schema's default vocab
            given = call.kw.get("vocab", call.args[0] if call.args else None) if call else None
            return True, S.BPETokenizer.model_fields["vocab"].default if given is None else given
        if name == "hf" and call is not None:
            path = call.kw.get("path", call.args[0] if call.args else None)
            if isinstance(path, str):
                from lmspec.compiler.rules_tokens import hf_tokenizer_file, hf_vocab_size
                return True, hf_vocab_size(hf_tokenizer_file(path, block.span.file))
        return True, None  # unknown: compiler.rules_tokens reports it where it is read (LMS092)
    return False, None

