"""Resolution: AST files -> `ResolvedSpec`.

Loads imports (relative to the importing file), merges `extends`, evaluates
references and arithmetic, and expands unit suffixes. The result holds plain
values (`compiler.values`) and, for every value and key, the span it came
from, so that the schema and the validators can point at the source.

Name lookup inside a field of block B: the fields of the innermost enclosing
scope (a layer override, a nested block, then B itself), skipping the field
being defined (so `layer 0 { heads: heads / 2 }` reads B's heads); then the
schema default of that key, which may itself read other keys in the same way
(`kv_heads` defaults to `heads`); then top-level block names; anything else is
a `Symbol` (an enum value such as `causal`) for the schema to judge. A block named
like a choice is a `Ref` here; the schema, which knows what each key takes, reads it
as the choice where the key takes no such block (`tokenizer bytes { kind: bytes }`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from lmspec.diagnostics import Diagnostic, Label, Span, closest, did_you_mean
from lmspec.grammar import ast
from lmspec.grammar.parser import MAX_NUMBER, gc_paused, parse, parse_file
from lmspec.compiler.values import CallValue, Combination, FromStage, Ref, Symbol, WithValue, describe

__all__ = ["ResolvedBlock", "ResolvedLayer", "ResolvedSpec", "NoValue", "resolve_file", "resolve_text", "Path_",
           "collapse_inherited"]

Path_ = tuple  # a path inside a block: ("position", "theta"), ("layers", 0, "heads"), ...


@dataclass
class ResolvedLayer:
    first: int
    last: int | None  # None: to the stack's last layer (`layer every 6 from 5`)
    range_span: Span
    fields: dict[str, Any] = field(default_factory=dict)
    every: int = 1

    def covers(self, layer: int) -> bool:
        return ast.layer_covers(self.first, self.last, self.every, layer)


@dataclass
class ResolvedBlock:
    kind: str
    name: str
    span: Span
    kind_span: Span
    name_span: Span
    fields: dict[str, Any] = field(default_factory=dict)
    nested: dict[str, "ResolvedBlock"] = field(default_factory=dict)
    layers: list[ResolvedLayer] = field(default_factory=list)
    # spans of values and of keys, by path inside this block; nested blocks and layer
    # overrides live under ("<nested name>", ...) and ("layer", i, ...)
    value_spans: dict[tuple, Span] = field(default_factory=dict)
    key_spans: dict[tuple, Span] = field(default_factory=dict)
    # its `extends` failed (and was reported): keys it lacks may be in the block it meant to
    # extend, so the schema does not also call them missing
    incomplete: bool = False
    extends: str | None = None  # the block named after `extends`, as written

    def span_of(self, path: tuple, key: bool = False) -> Span:
        """The span of the longest prefix of `path` we know; the block's name if none."""
        table = self.key_spans if key else self.value_spans
        for n in range(len(path), 0, -1):
            span = table.get(tuple(path[:n])) or (None if key else self.key_spans.get(tuple(path[:n])))
            if span is not None:
                return span
        return self.name_span


@dataclass
class ResolvedSpec:
    blocks: dict[str, ResolvedBlock]
    sources: dict[str, str]
    diagnostics: list[Diagnostic]
    root: str

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    def of_kind(self, kind: str) -> list[ResolvedBlock]:
        return [b for b in self.blocks.values() if b.kind == kind]


# Hooks the schema installs, so that resolution can read defaults and derived
# attributes (`tok.vocab_size`) without this module importing the schema.
# (kind, key, read) -> (found, value); `read(other)` is (found, value) of another key where
# the default is read, for defaults that depend on other keys (`kv_heads` = `heads`).
Read = Callable[[str], tuple[bool, Any]]
DefaultLookup = Callable[[str, str, Read], tuple[bool, Any]]
DerivedLookup = Callable[["ResolvedBlock", str, "Resolver"], tuple[bool, Any]]


class NoValue(Exception):
    """Raised by a DefaultLookup for a key of the schema that has no value to read: it has no
    default (`formula` None); its default (`formula`, such as "4 * d_model") needs `missing`,
    which has no value either; or (`missing` None) its default is known only after resolution,
    and `help` says what to write instead."""

    def __init__(self, key: str, formula: str | None = None, missing: str | None = None,
                 help: str | None = None):
        super().__init__(key)
        self.key, self.formula, self.missing, self.help = key, formula, missing, help


class _Cycle(Exception):
    pass


class _Scope:
    """Fields visible at one level: a block, a nested block or a layer override."""

    def __init__(self, entries: dict[str, ast.Field], parent: "_Scope | None", kind: str, path: tuple,
                 block: "_Merged"):
        self.entries, self.parent, self.kind, self.path, self.block = entries, parent, kind, path, block
        self.values: dict[str, Any] = {}


@dataclass
class _Merged:
    """A block after `extends` and before evaluation."""

    block: ast.Block
    fields: dict[str, ast.Field]
    nested: dict[str, "_MergedNested"]
    layers: list[ast.LayerOverride]
    incomplete: bool = False  # its `extends` failed (reported), here or up its chain


@dataclass
class _MergedNested:
    node: ast.Nested
    fields: dict[str, ast.Field]
    nested: dict[str, "_MergedNested"]
    layers: list[ast.LayerOverride]


MAX_IMPORT_DEPTH = 32
MAX_EXTENDS_DEPTH = 64  # `merge` recurses once per link of an extends chain


class Resolver:
    def __init__(self, defaults: DefaultLookup | None = None, derived: DerivedLookup | None = None):
        self.defaults = defaults or (lambda kind, key, read: (False, None))
        self.derived = derived or (lambda block, attr, resolver: (False, None))
        self.diagnostics: list[Diagnostic] = []
        self.sources: dict[str, str] = {}
        self.files: dict[str, ast.SpecFile] = {}
        self.blocks: dict[str, ast.Block] = {}
        self.block_file: dict[str, str] = {}
        self.merged: dict[str, _Merged] = {}
        self.resolved: dict[str, ResolvedBlock] = {}
        self._in_progress: dict[tuple[str, tuple, str], None] = {}  # fields being evaluated, in order
        self._too_deep: set[str] = set()  # blocks already told their references are too deep
        self._chain_too_long = False  # an extends chain beyond MAX_EXTENDS_DEPTH was reported
        # blocks that failed to parse: a reference to one has no value, and no error of its own
        self.broken: set[str] = set()

    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              labels: list[Label] | None = None) -> None:
        self.diagnostics.append(Diagnostic("error", code, message, span, labels or [], help))

    # ------------------------------------------------------------------ loading

    def load(self, spec: ast.SpecFile, chain: tuple[str, ...]) -> None:
        here = Path(spec.path).parent if spec.path != "<string>" else Path.cwd()
        for imp in spec.imports:
            target = str((here / imp.path).resolve()) if not Path(imp.path).is_absolute() else imp.path
            if target in chain:
                names = " -> ".join(Path(p).name for p in chain[chain.index(target):]) + f" -> {Path(target).name}"
                self.error("LMS021", f"import cycle: {names}", imp.span, help="remove one of these imports")
                continue
            if target in self.files:
                continue
            if len(chain) > MAX_IMPORT_DEPTH:
                self.error("LMS021", "imports nested too deeply", imp.span,
                           help=f"import the files from one place, not through a chain of more than {MAX_IMPORT_DEPTH}")
                continue
            display = os.path.relpath(target)
            if display.startswith("../.."):  # far from here: the absolute path reads better
                display = target
            tree, text, diags = parse_file(display)
            if text is None:
                exists = Path(target).exists()
                reason = ("it is a directory" if Path(target).is_dir() else
                          diags[0].message.rsplit(": ", 1)[-1] if exists and diags else "no such file")
                self.error("LMS020", f"cannot import '{imp.path}': {reason}", imp.span,
                           help=f"the path is relative to {here.resolve()}"
                           if not exists else "import a readable .lmspec file")
                continue
            self.sources[display] = text
            self.diagnostics += diags
            if tree is None:
                continue
            self.files[target] = tree
            # an imported file's blocks come before the importer's, as its text does: a name
            # defined twice is reported in the importing file, where it is being redefined
            self.load(tree, chain + (target,))
            self.add_blocks(tree)

    def add_blocks(self, spec: ast.SpecFile) -> None:
        self.broken.update(spec.broken)
        for block in spec.blocks:
            name = block.name.name
            if name in self.blocks:
                other = self.blocks[name]
                self.error("LMS022", f"a block named '{name}' is already defined", block.name.span,
                           help="rename one of them",
                           labels=[Label(other.name.span, "first defined here")])
                continue
            self.blocks[name] = block

    # ------------------------------------------------------------------ extends

    def merge(self, name: str, chain: tuple[str, ...] = ()) -> _Merged:
        if name in self.merged:
            return self.merged[name]
        block = self.blocks[name]
        merged = _Merged(block, *self._collect(block.entries))
        if block.extends is not None:
            base = self._base(name, block, chain)
            if base is None:  # the `extends` failed and was reported
                merged.incomplete = True
            else:
                merged = replace(_overlay(base, merged), incomplete=base.incomplete)
        self.merged[name] = merged
        return merged

    def _base(self, name: str, block: ast.Block, chain: tuple[str, ...]) -> _Merged | None:
        """The merged block that `block` extends; None (reported) when it cannot extend it."""
        base_name = block.extends.name
        if len(chain) >= MAX_EXTENDS_DEPTH:
            if not self._chain_too_long:  # every MAX_EXTENDS_DEPTH links of it would say so again
                self._chain_too_long = True
                self.error("LMS011", f"more than {MAX_EXTENDS_DEPTH} blocks extend one another in a chain",
                           block.extends.span, help="extend a block nearer the root of the chain")
            return None
        if base_name in chain or base_name == name:
            cycle = " -> ".join(chain + (name, base_name))
            self.error("LMS025", f"blocks extend each other in a cycle: {cycle}", block.extends.span,
                       help="remove one `extends`")
            return None
        if base_name not in self.blocks:
            if base_name not in self.broken:
                self.error("LMS024", f"'{name}' extends '{base_name}', which is not defined", block.extends.span,
                           help=did_you_mean(base_name, [n for n, b in self.blocks.items()
                                                         if b.kind.name == block.kind.name and n != name])
                           or f"define a {block.kind.name} block named '{base_name}', or extend one that exists")
            return None
        base = self.blocks[base_name]
        if base.kind.name != block.kind.name:
            self.error("LMS024", f"a {block.kind.name} cannot extend the {base.kind.name} '{base_name}'",
                       block.extends.span, labels=[Label(base.kind.span, f"'{base_name}' is a {base.kind.name}")],
                       help=f"extend a {block.kind.name} block")
            return None
        return self.merge(base_name, chain + (name,))

    def _collect(self, entries) -> tuple[dict, dict, list]:
        fields: dict[str, ast.Field] = {}
        nested: dict[str, _MergedNested] = {}
        layers: list[ast.LayerOverride] = []
        for entry in entries:
            if isinstance(entry, ast.Field):
                key = entry.key.name
                if key in fields or key in nested:
                    self._given_twice(key, entry.key.span,
                                      fields[key].key.span if key in fields else nested[key].node.name.span)
                    continue
                fields[key] = entry
            elif isinstance(entry, ast.Nested):
                key = entry.name.name
                if key in fields or key in nested:  # only `extends` and `--set` merge nested blocks
                    self._given_twice(key, entry.name.span,
                                      fields[key].key.span if key in fields else nested[key].node.name.span)
                    continue
                nested[key] = _MergedNested(entry, *self._collect(entry.entries))
            else:
                layers.append(entry)
        return fields, nested, layers

    def _given_twice(self, key: str, span: Span, first: Span) -> None:
        self.error("LMS030", f"'{key}' is given twice", span, help="remove one of them",
                   labels=[Label(first, "first given here")])

    # ------------------------------------------------------------------ evaluation

    def resolve_block(self, name: str) -> ResolvedBlock:
        if name in self.resolved:
            return self.resolved[name]
        m = self.merged[name]
        b = m.block
        out = ResolvedBlock(b.kind.name, name, b.span, b.kind.span, b.name.span, incomplete=m.incomplete,
                            extends=b.extends.name if b.extends is not None else None)
        self.resolved[name] = out
        kind = b.kind.name
        scope = _Scope(m.fields, None, kind, (), m)
        self._fill(out, scope, m.fields, m.nested, m.layers, (), kind)
        return out

    def _fill(self, out: ResolvedBlock, scope: _Scope, fields, nested, layers, path: tuple, kind: str):
        target = out.fields if not path else _dig(out, path)
        for key, fld in fields.items():
            out.key_spans[path + (key,)] = fld.key.span
            target[key] = self._value_or_none(scope, key, fld, out)
        for key, sub in nested.items():
            out.key_spans[path + (key,)] = sub.node.name.span
            child = _Scope(sub.fields, scope, f"{kind}.{key}", path + (key,), scope.block)
            if not path:
                nb = ResolvedBlock(f"{kind}.{key}", key, sub.node.span, sub.node.name.span, sub.node.name.span)
                out.nested[key] = nb
            else:  # deeper nesting is kept as a dict value
                target[key] = {}
            self._fill(out, child, sub.fields, sub.nested, sub.layers, path + (key,), kind)
        base_index = len(_layers_of(out, path))
        for i, lo in enumerate(layers):
            lpath = path + ("layer", base_index + i)
            out.key_spans[lpath] = lo.range_span
            entries: dict[str, ast.Field] = {}
            for e in lo.entries:
                if isinstance(e, ast.Field):
                    if e.key.name in entries:
                        self._given_twice(e.key.name, e.key.span, entries[e.key.name].key.span)
                    else:
                        entries[e.key.name] = e
                else:
                    what = "nested blocks" if isinstance(e, ast.Nested) else "layer overrides"
                    self.error("LMS049", f"{what} cannot appear inside a layer override", e.span,
                               help="a layer override holds keys only; write it at the level of the block or stack")
            layer_scope = _Scope(entries, scope, scope.kind, lpath, scope.block)
            rl = ResolvedLayer(lo.first, lo.last, lo.range_span, every=lo.every)
            _layers_of(out, path).append(rl)
            for key, fld in entries.items():
                out.key_spans[lpath + (key,)] = fld.key.span
                rl.fields[key] = self._value_or_none(layer_scope, key, fld, out)

    def _value_or_none(self, scope: _Scope, key: str, fld: ast.Field, out: ResolvedBlock) -> Any:
        """A field's value; None when it cannot be computed (the reason is reported)."""
        try:
            return self.field_value(scope, key)
        except _Cycle:
            return None
        except RecursionError:
            # a chain of references (fields, blocks) too long for the interpreter's stack;
            # every field along the chain fails here, so say it once per block
            if out.name not in self._too_deep:
                self._too_deep.add(out.name)
                self.error("LMS011", f"'{key}' depends on a chain of references too long to evaluate", fld.key.span,
                           help="shorten the chain: give some field in it a value of its own")
            return None

    def field_value(self, scope: _Scope, key: str) -> Any:
        if key in scope.values:
            return scope.values[key]
        marker = (scope.block.block.name.name, scope.path, key)
        if marker in self._in_progress:
            cycle = list(self._in_progress)
            cycle = cycle[cycle.index(marker):] + [marker]
            # `a -> b -> a` inside one block; `x.vocab -> y.vocab -> x.vocab` across blocks
            across = len({b for b, _, _ in cycle}) > 1
            names = [".".join(([b] if across else []) + [str(p) for p in path if p != "layer"] + [k])
                     for b, path, k in cycle]
            fld = scope.entries[key]
            self.error("LMS026", f"fields refer to each other in a cycle: {' -> '.join(names)}", fld.value.span,
                       help="give one of them a value that does not depend on the others")
            raise _Cycle()
        self._in_progress[marker] = None
        try:
            fld = scope.entries[key]
            value = self.eval(fld.value, scope, key, scope.path + (key,))
        except (_Cycle, RecursionError):
            # every field on a failed chain has no value: computed once, reported once
            scope.values[key] = None
            raise
        finally:
            del self._in_progress[marker]
        scope.values[key] = value
        return value

    def eval(self, node, scope: _Scope, key: str, path: tuple) -> Any:
        block = self._current_block(scope)
        spans = block.value_spans if block is not None else {}
        spans.setdefault(path, node.span)
        if isinstance(node, (ast.Number, ast.String, ast.Bool)):
            return node.value
        if isinstance(node, ast.Invalid):  # the parser refused it and said why
            return None
        if isinstance(node, ast.Name):
            return self.lookup(node, scope, key)
        if isinstance(node, ast.ListExpr):
            items = [self.eval(item, scope, key, path + (i,)) for i, item in enumerate(node.items)]
            # an item that failed to resolve was reported; the list as a whole has no value
            return None if any(item is None for item in items) else items
        if isinstance(node, ast.Attr):
            obj = self.eval(node.obj, scope, key, path)
            return self.attribute(obj, node.name, node.span)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                name, target = node.func.id, None
            elif isinstance(node.func, ast.Attr):
                name, target = node.func.name.name, self.eval(node.func.obj, scope, key, path)
            else:
                self.error("LMS027", "only a name or `block.method` can be called", node.func.span,
                           help="write a variant such as `rope(theta: 500k)` or a method such as `stories.prefixes()`")
                return None
            args = tuple(self.eval(a, scope, key, path + (i,)) for i, a in enumerate(node.args))
            kwargs = []
            for k, v in node.kwargs:
                if any(k.name == seen for seen, _ in kwargs):
                    self.error("LMS030", f"argument '{k.name}' is given twice", k.span, help="remove one of them")
                    continue
                block and block.key_spans.setdefault(path + (k.name,), k.span)
                kwargs.append((k.name, self.eval(v, scope, key, path + (k.name,))))
            if any(a is None for a in args) or any(v is None for _, v in kwargs) or (
                    isinstance(node.func, ast.Attr) and target is None):
                return None  # an argument failed to resolve and was reported
            return CallValue(name, args, tuple(kwargs), target)
        if isinstance(node, ast.Neg):
            value = self.eval(node.operand, scope, key, path)
            if _is_number(value):
                return -value
            if value is not None and not self._undefined_name([(node.operand, value)], scope):
                self.error("LMS027", f"cannot negate {describe(value)}", node.span, help="only numbers can be negated")
            return None
        if isinstance(node, ast.BinOp):
            return self.binop(node, self.eval(node.left, scope, key, path), self.eval(node.right, scope, key, path),
                              scope)
        if isinstance(node, ast.FromStage):
            value = self.eval(node.value, scope, key, path)
            stage = self.block_ref(node.stage.name, node.stage.span)
            return FromStage(value, stage) if stage is not None and value is not None else None
        if isinstance(node, ast.WithField):
            value = self.eval(node.value, scope, key, path)
            block and block.key_spans.setdefault(path + (node.key.name,), node.key.span)
            replacement = self.eval(node.field_value, scope, key, path + (node.key.name,))
            return WithValue(value, node.key.name, replacement) if value is not None and replacement is not None else None
        raise TypeError(f"unknown node {node!r}")  # pragma: no cover

    def _current_block(self, scope: _Scope) -> ResolvedBlock | None:
        return self.resolved.get(scope.block.block.name.name)

    def lookup(self, node: ast.Name, scope: _Scope, key: str) -> Any:
        name = node.id
        try:
            found, value = self.read(name, scope, key)
        except NoValue as e:
            if name in self.blocks:
                return Ref(self.blocks[name].kind.name, name)
            self._no_value(e, node.span, scope, key)
            return None
        if found:
            return value
        if name in self.blocks:
            return Ref(self.blocks[name].kind.name, name)
        if name in self.broken:
            return None
        return Symbol(name)

    def read(self, name: str, scope: _Scope, key: str | None) -> tuple[bool, Any]:
        """(found, value) of the key `name` seen from `scope` while `key` is being defined there:
        a field of the scope or of one enclosing it (not `key` itself), else the schema default
        of `name`, whose own reads of other keys are made from the same place. Raises NoValue
        for a key of the schema that has no value to read."""
        s, skip = scope, key
        while s is not None:
            if name in s.entries and name != skip:
                return True, self.field_value(s, name)
            s, skip = s.parent, None
        return self.defaults(scope.kind, name, lambda other: self._read_or_nothing(other, scope, key))

    def _read_or_nothing(self, name: str, scope: _Scope, key: str | None) -> tuple[bool, Any]:
        try:
            return self.read(name, scope, key)
        except NoValue:  # the default that asked for it says what is missing
            return False, None

    def _no_value(self, e: NoValue, span: Span, scope: _Scope, key: str | None) -> None:
        """Report a key read at `span` that has no value (see NoValue)."""
        block = scope.block.block
        where = f"{block.kind.name} '{block.name.name}'"
        needed = e.missing if e.formula is not None else e.key
        if needed is not None and needed == key and scope.parent is None and key in scope.entries:
            # only the field being defined could give it a value: `heads: kv_heads` (kv_heads = heads)
            via = f": '{e.key}' defaults to {e.formula}" if e.formula is not None else ""
            self.error("LMS026", f"'{key}' refers to itself{via}", span,
                       help=f"give '{e.key}' a value of its own" if e.formula is not None else
                       f"write '{key}' as a number or an expression of other fields")
        elif e.formula is None:
            self.error("LMS023", f"'{e.key}' has no value: {where} does not set it, and it has no default", span,
                       help=f"set `{e.key}: ...` in {where}")
        elif e.missing is not None:
            self.error("LMS023", f"'{e.key}' has no value: its default is {e.formula}, and {where} does not set "
                       f"'{e.missing}'", span, help=f"set '{e.missing}' in {where}, or give '{e.key}' a value")
        else:
            self.error("LMS023", f"'{e.key}' cannot be read here: its default, {e.formula}, is not known "
                       f"when the spec is resolved", span, help=e.help)

    def block_ref(self, name: str, span: Span) -> Ref | None:
        if name in self.blocks:
            return Ref(self.blocks[name].kind.name, name)
        if name not in self.broken:
            self.error("LMS023", f"'{name}' is not defined", span,
                       help=did_you_mean(name, self.blocks) or f"define a block named '{name}'")
        return None

    def attribute(self, obj: Any, name: ast.Ident, span: Span) -> Any:
        if obj is None:
            return None
        if isinstance(obj, Symbol):
            self.error("LMS023", f"'{obj.name}' is not defined", Span(span.file, span.line, span.col, span.line,
                       span.col + len(obj.name), span.start, span.start + len(obj.name)),
                       help=did_you_mean(obj.name, self.blocks) or f"define a block named '{obj.name}'")
            return None
        if not isinstance(obj, Ref):
            self.error("LMS029", f"{describe(obj)} has no attribute '{name.name}'", name.span,
                       help="only blocks have attributes: `block.key`")
            return None
        target = self.resolve_block(obj.name) if obj.name in self.merged else None
        if target is None:
            return None
        merged = self.merged[obj.name]
        scope = _Scope(merged.fields, None, obj.kind, (), merged)
        if name.name in merged.fields:
            if name.name in target.fields:  # already computed
                return target.fields[name.name]
            return self.field_value(scope, name.name)
        found, value = self.derived(target, name.name, self)
        if found:
            return value
        try:
            found, value = self.read(name.name, scope, None)  # its default, which may read its fields
        except NoValue as e:
            self._no_value(e, name.span, scope, None)
            return None
        if found:
            return value
        candidates = list(merged.fields)
        self.error("LMS029", f"the {obj.kind} '{obj.name}' has no attribute '{name.name}'", name.span,
                   help=did_you_mean(name.name, candidates + ["vocab_size"] * (obj.kind == "tokenizer")) or
                   f"the attributes of '{obj.name}' are the keys it sets"
                   + (f" ({', '.join(candidates)})" if candidates else "")
                   + (" and vocab_size" if obj.kind == "tokenizer" else ""))
        return None

    def binop(self, node: ast.BinOp, left: Any, right: Any, scope: _Scope | None = None) -> Any:
        if left is None or right is None:
            return None
        op = node.op
        if _is_number(left) and _is_number(right):
            if op == "/" and right == 0:
                self.error("LMS028", "division by zero", node.right.span, help="divide by a number other than 0")
                return None
            if op == "**":
                return self._power(left, right, node)
            try:
                if op == "+":
                    result = left + right
                elif op == "-":
                    result = left - right
                elif op == "*":
                    result = left * right
                elif isinstance(left, int) and isinstance(right, int) and left % right == 0:
                    result = left // right
                else:
                    result = left / right
            except OverflowError:  # int / int beyond a float's range
                result = math.inf
            return self._finite(result, node)
        # a bare name close to a field in scope is a typo (`4 * d_modle`, `d_modle / heads`),
        # not a term of a weighted sum
        if self._undefined_name([(node.left, left), (node.right, right)], scope, only_typos=True):
            return None
        # weighted sums of non-numeric terms: objectives such as `mlm + 0.5 * nsp`
        if op in "+-" and not _is_number(left) and not _is_number(right) and _termable(left) and _termable(right):
            sign = 1.0 if op == "+" else -1.0
            return Combination(_terms(left) + tuple((sign * w, t) for w, t in _terms(right)))
        if op == "*" and _is_number(left) and _termable(right) and not _is_number(right):
            return self._weighted(((float(left) * w, t) for w, t in _terms(right)), node)
        if op == "*" and _is_number(right) and _termable(left) and not _is_number(left):
            return self._weighted(((float(right) * w, t) for w, t in _terms(left)), node)
        if op == "/" and _is_number(right) and _termable(left) and not _is_number(left):  # `nsp / 2`
            if right == 0:
                self.error("LMS028", "division by zero", node.right.span, help="divide by a number other than 0")
                return None
            return self._weighted(((w / right, t) for w, t in _terms(left)), node)
        if isinstance(left, str) and isinstance(right, str) and op == "+":
            return left + right
        if self._undefined_name([(node.left, left), (node.right, right)], scope):
            return None
        self.error("LMS027", f"cannot compute {describe(left)} {op} {describe(right)}", node.span,
                   help="arithmetic works on numbers; objectives combine as `mlm + 0.5 * nsp`")
        return None

    def _undefined_name(self, operands: list[tuple[Any, Any]], scope: _Scope | None,
                        only_typos: bool = False) -> bool:
        """Arithmetic on a bare name which is no field and no block: when the arithmetic fails,
        or (`only_typos`) when the name is close to a field in scope, the name is a typo
        (`d_model / hedas`), not an enum value. Report it as undefined, at the name."""
        visible = set(self.blocks)
        s = scope
        while s is not None:
            visible.update(s.entries)
            s = s.parent
        for node, value in operands:
            if isinstance(value, Symbol):
                names = [value.name]
            elif isinstance(value, Combination):
                names = [t.name for _, t in value.terms if isinstance(t, Symbol)]
            else:
                continue
            for name in names:
                near = closest(name, visible - {name})  # never "did you mean" the name itself
                if only_typos and near is None:
                    continue
                self.error("LMS023", f"'{name}' is not defined", _name_span(node, name) or node.span,
                           help=f"did you mean '{near}'?" if near else f"define '{name}' as a field or a block")
                return True
        return False

    def _power(self, left: int | float, right: int | float, node: ast.BinOp) -> int | float | None:
        """`left ** right`: an int for an int to a non-negative int, else a float; None (reported)
        for 0 to a negative power, a complex result, or one beyond the range of a spec."""
        if left == 0 and right < 0:
            self.error("LMS028", f"0 ** {right} divides by zero", node.span,
                       help="raise 0 only to a power of 0 or more, or raise a number other than 0")
            return None
        if left < 0 and right != int(right):  # -8 ** 0.5 is -(8 ** 0.5); this is (-8) ** 0.5
            self.error("LMS027", f"({left}) ** {right} is not a real number", node.span,
                       help="raise a negative number only to a whole power")
            return None
        # |left| ** right past a float's range, judged before computing it: 10 ** 10000 as an int
        # would take the time and memory of ten thousand digits only to be refused
        if abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > 1024:
            return self._finite(math.inf, node)
        if isinstance(left, int) and isinstance(right, int) and right >= 0:
            return self._finite(left ** right, node)
        try:
            return self._finite(float(left) ** float(right), node)
        except OverflowError:  # 0.5 ** -2000
            return self._finite(math.inf, node)

    def _weighted(self, terms, node: ast.BinOp) -> Combination | None:
        """The weighted sum of `terms`; None (reported once) when a weight is out of range."""
        terms = tuple(terms)
        return Combination(terms) if all(self._finite(w, node) is not None for w, _ in terms) else None

    def _finite(self, value, node: ast.BinOp):
        """The value, or None (reported) when arithmetic left the range a spec can hold."""
        if abs(value) <= MAX_NUMBER:  # False for inf and nan too
            return value
        self.error("LMS032", "the result of this arithmetic is too large", node.span,
                   help=f"numbers in a spec are at most {MAX_NUMBER:.3g}")
        return None


def _name_span(node: Any, name: str) -> Span | None:
    """The span of the first bare `name` inside an expression."""
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name):
            if n.id == name:
                return n.span
        elif isinstance(n, ast.BinOp):
            todo += [n.right, n.left]
        elif isinstance(n, ast.Neg):
            todo.append(n.operand)
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _termable(v: Any) -> bool:
    # a Ref too: `mlm + nsp` in a spec with a block named mlm is still a sum of objectives
    return isinstance(v, (Symbol, CallValue, Combination, Ref))


def _terms(v: Any) -> tuple:
    return v.terms if isinstance(v, Combination) else ((1.0, v),)


def _overlay(base, own):
    """`own` over `base` (both _Merged, or both _MergedNested): the fields of `own` win, nested
    blocks merge, and the layer overrides of both apply, those of `base` first."""
    return replace(own, fields={**base.fields, **own.fields}, nested=_merge_nested(base.nested, own.nested),
                   layers=base.layers + own.layers)


def _merge_nested(base: dict, own: dict) -> dict:
    out = dict(base)
    for key, sub in own.items():
        out[key] = _overlay(out[key], sub) if key in out else sub
    return out


def _dig(block: ResolvedBlock, path: tuple) -> dict:
    target = block.nested[path[0]].fields
    for p in path[1:]:
        target = target.setdefault(p, {})
    return target


def _layers_of(block: ResolvedBlock, path: tuple) -> list:
    if not path:
        return block.layers
    return block.nested[path[0]].layers


# ---------------------------------------------------------------------- inherited problems


def collapse_inherited(diagnostics: list[Diagnostic], blocks: dict[str, ResolvedBlock]) -> list[Diagnostic]:
    """One diagnostic per problem written in a base block. A block that others extend is
    evaluated and checked once per heir, so a mistake in its text comes back once for itself and
    once for every heir, often naming the heir (`unknown key 'bais' in model 'k1'`). Diagnostics
    of one code at one span in a base, whose messages differ only by naming the base or one of
    its heirs, are one problem: one is kept (in the base's words where the base has its own),
    with the labels of the others and a note naming the heirs that inherit it."""
    heirs: dict[str, list[str]] = {}
    for name, block in blocks.items():
        seen, base = {name}, block.extends
        while base in blocks and base not in seen:  # every ancestor, an extends cycle stopped
            heirs.setdefault(base, []).append(name)
            seen.add(base)
            base = blocks[base].extends
    if not heirs:
        return diagnostics
    out: list[Diagnostic] = []
    groups: dict[tuple, tuple[Diagnostic, list[str]]] = {}
    for d in diagnostics:
        base = _block_around(d.span, blocks, heirs) if d.span is not None else None
        if base is None:
            out.append(d)
            continue
        named = [h for h in heirs[base] if f"'{h}'" in d.message]
        message = d.message
        for h in named:
            message = message.replace(f"'{h}'", f"'{base}'")
        key = (d.code, d.span, message)
        if key not in groups:
            groups[key] = (d, named)
            out.append(d)
            continue
        kept, also = groups[key]
        kept.labels += [label for label in d.labels if label not in kept.labels]
        also += [h for h in named if h not in also]
        if d.message == message != kept.message:  # the base's own words, where an heir came first
            kept.message, kept.help = d.message, d.help
    for (_, span, _), (kept, also) in groups.items():
        others = [f"'{h}'" for h in also if f"'{h}'" not in kept.message]
        if others:
            base = _block_around(span, blocks, heirs)
            names = ", ".join(others[:-1]) + " and " + others[-1] if len(others) > 1 else others[0]
            kept.notes.append(f"{names} inherit{'s' * (len(others) == 1)} this from '{base}'")
    return out


def _block_around(span: Span, blocks: dict[str, ResolvedBlock], heirs: dict[str, list[str]]) -> str | None:
    """The base block (one that others extend) whose text holds `span`."""
    for name in heirs:
        b = blocks[name].span
        if b.file == span.file and b.start <= span.start and span.end <= b.end and b.end > b.start:
            return name
    return None


# ---------------------------------------------------------------------- front doors


def _resolve(tree: ast.SpecFile | None, text: str | None, path: str, diagnostics: list[Diagnostic],
             defaults: DefaultLookup | None, derived: DerivedLookup | None,
             overrides: tuple[str, ...] = ()) -> ResolvedSpec:
    r = Resolver(defaults, derived)
    r.diagnostics += diagnostics
    if text is not None:
        r.sources[path] = text
    if tree is None:
        return ResolvedSpec({}, r.sources, r.diagnostics, path)
    root = str(Path(path).resolve()) if path != "<string>" else path
    r.files[root] = tree
    r.load(tree, (root,))
    r.add_blocks(tree)
    if overrides:
        _apply_overrides(r, overrides)
    for name in r.blocks:
        r.merge(name)
    try:
        for name in r.blocks:
            r.resolve_block(name)
    except RecursionError:
        r.error("LMS011", "the spec is too deeply nested to resolve", None,
                help="split long expressions and reference chains into fields")
    ordered = {name: r.resolved[name] for name in r.blocks if name in r.resolved}
    r.diagnostics = collapse_inherited(r.diagnostics, ordered)
    if not r.blocks and not r.broken and not any(d.is_error for d in r.diagnostics):
        r.diagnostics.append(Diagnostic(  # an empty file is most often the wrong file, or a save cut short
            "warning", "LMS034", "the file defines no blocks", Span(path, 1, 1, 1, 1),
            help="a spec is blocks such as `model gpt { ... }` after `lmspec 1` (see docs/language.md)"))
    return ResolvedSpec(ordered, r.sources, r.diagnostics, path)


def resolve_text(text: str, path: str = "<string>", *, defaults: DefaultLookup | None = None,
                 derived: DerivedLookup | None = None, overrides: tuple[str, ...] = ()) -> ResolvedSpec:
    with gc_paused():  # see gc_paused: resolution allocates much and builds no cycles
        tree, diagnostics = parse(text, path)
        return _resolve(tree, text, path, diagnostics, defaults, derived, tuple(overrides))


def resolve_file(path: str | Path, *, defaults: DefaultLookup | None = None,
                 derived: DerivedLookup | None = None, overrides: tuple[str, ...] = ()) -> ResolvedSpec:
    with gc_paused():
        tree, text, diagnostics = parse_file(path)
        return _resolve(tree, text, str(path), diagnostics, defaults, derived, tuple(overrides))


# ---------------------------------------------------------------------- --set overrides

OVERRIDES_FILE = "<--set>"
_OVERRIDE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*=(.*)$", re.S)


def _apply_overrides(r: Resolver, overrides: tuple[str, ...]) -> None:
    """`--set STAGE.KEY=VALUE` (or `STAGE.NESTED.KEY=VALUE`): each override is written as a
    block of the file `<--set>`, one line each, and its fields replace the block's own before
    `extends` and evaluation — so an override is checked exactly as the spec is, and a
    diagnostic points into the override's own line."""
    lines, targets = [], []
    for i, text in enumerate(overrides):
        m = _OVERRIDE.match(text)
        if m is None:
            lines.append("")
            r.error("LMS033", f"--set {text!r} is not BLOCK.KEY=VALUE", None,
                    help="write for example --set pretrain.steps=100")
            continue
        name, keys, value = m.group(1), m.group(2)[1:].split("."), m.group(3).strip()
        body = f"{keys[-1]}: {value}"
        for key in reversed(keys[:-1]):  # align.rollouts.per_step=32 -> rollouts { per_step: 32 }
            body = f"{key} {{ {body} }}"
        lines.append(f"set {name} {{ {body} }}")
        targets.append((i, name))
    text = "\n".join(lines) + "\n"
    r.sources[OVERRIDES_FILE] = text
    tree, diagnostics = parse(text, OVERRIDES_FILE)
    r.diagnostics += [d for d in diagnostics if d.code != "LMS010"]  # overrides have no version header
    if tree is None:
        return
    for block in tree.blocks:
        name = block.name.name
        if name not in r.blocks:
            r.error("LMS033", f"--set names '{name}', which is not a block of this spec", block.name.span,
                    help=did_you_mean(name, list(r.blocks)) or f"the blocks are: {', '.join(r.blocks) or 'none'}")
            continue
        own = r.blocks[name]
        r.blocks[name] = replace(own, entries=_patched(own.entries, block.entries))


def _patched(entries: tuple, patch: tuple) -> tuple:
    """`entries` with each field of `patch` replacing the field of that key (or added), and
    each nested block of `patch` patched into the nested block of that name."""
    out = list(entries)
    for new in patch:
        key = new.key.name if isinstance(new, ast.Field) else new.name.name
        at = next((i for i, e in enumerate(out) if isinstance(e, (ast.Field, ast.Nested))
                   and (e.key.name if isinstance(e, ast.Field) else e.name.name) == key), None)
        if at is None:
            out.append(new)
        elif isinstance(new, ast.Nested) and isinstance(out[at], ast.Nested):
            out[at] = replace(out[at], entries=_patched(out[at].entries, new.entries))
        else:
            out[at] = new
    return tuple(out)
