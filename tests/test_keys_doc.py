"""docs/keys.md lists every key of the language with the checks that cover it; this keeps it true.

* every key of every block kind, nested block and variant argument the schema defines has a row,
  with the type and default the schema gives it, and no row names a key the schema lacks;
* every code the rows cite is a registered code;
* a sample of rows: a spec that breaks the key draws exactly the code its row cites.

Row keys are paths: `model.heads`, `model.encoder.layers` (also `decoder { }`), `model.layer.first`
(`layer A..B { }`), `train.model.stage` (`gpt from STAGE`), `model.position: rope(theta:)` (an
argument of a variant), `*.allow` (a key of every block kind). A nested block or variant used in
several places has its rows once, under the first path that reaches it.
"""

from __future__ import annotations

import re
import textwrap
import types
import typing
from collections import deque
from pathlib import Path
from typing import Annotated, Union

import pytest
from pydantic import BaseModel

import lmspec.compiler.api  # noqa: F401 - with the rule modules it imports, registers every code
from lmspec.compiler import compile as _compile, costs as _costs, graphs as _graphs  # noqa: F401 - codes too
from lmspec.compiler import schema as S
from lmspec.compiler.api import check_text
from lmspec.compiler.docgen import _default, _range, _type_name
from lmspec.compiler.schema_check import _annotation, _ref_kinds, variants_of
from lmspec.diagnostics import CODES

KEYS_DOC = Path(__file__).resolve().parents[1] / "docs" / "keys.md"


# ------------------------------------------------------------------------------ the schema's keys


def _classes(tp) -> list[type[BaseModel]]:
    """The schema classes a field's type can hold, through Annotated, Optional, unions and lists."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _classes(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType, list):
        return [c for arg in typing.get_args(tp) for c in _classes(arg)]
    return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _fields(cls: type[BaseModel]):
    return [(info.alias or name, info) for name, info in cls.model_fields.items()
            if not (issubclass(cls, S.Variant) and name == "kind")]


def schema_keys() -> list[tuple[str, object]]:
    """(row key, FieldInfo) of every key, breadth-first per block kind so that a class shared by
    several keys (`layer a..b { }` in the model and in its stacks) is named by its nearest use.
    A field named like the key that holds it is that key itself: the objective of an objective
    term is `train.objective`, the model of a model use `train.model`."""
    common = set.intersection(*({k for k, _ in _fields(cls)} for cls in S.BLOCK_KINDS.values()))
    first = next(iter(S.BLOCK_KINDS.values())).model_fields
    out = [(f"*.{key}", first[key]) for key in sorted(common)]
    seen: set[type] = set()
    for kind, block in S.BLOCK_KINDS.items():
        queue = deque([(block, kind)])
        while queue:
            cls, prefix = queue.popleft()
            for key, info in _fields(cls):
                if cls is block and key in common:
                    continue
                if issubclass(cls, S.Variant):
                    path = f"{prefix}({key}:)"
                elif prefix.rsplit(".", 1)[-1] == key:
                    path = prefix
                else:
                    path = f"{prefix}.{key}"
                if path != prefix:
                    out.append((path, info))
                for sub in _classes(_annotation(info)):
                    if sub not in seen:
                        seen.add(sub)
                        tag = sub.model_fields["kind"].default if issubclass(sub, S.Variant) else None
                        queue.append((sub, f"{path}: {tag}" if tag else path))
    return out


def type_text(info) -> str:
    """The type column: what the language takes for a key, and its range."""
    tp = _annotation(info)
    kinds, variants = _ref_kinds(tp), variants_of(tp)
    uses = any(c is S.ModelUse for c in _classes(tp))
    if uses:
        text = "a model: `M`, `M from STAGE`, `M with head H`"
        if variants:
            text += " or " + " \\| ".join(f"`{tag}(...)`" for tag in variants)
    elif kinds and variants:
        text = " or ".join(f"{k} block" for k in kinds) + " or " + " \\| ".join(f"`{tag}(...)`" for tag in variants)
    elif _nested(tp) is S.ObjectiveTerm:
        text = _type_name(_annotation(S.ObjectiveTerm.model_fields["objective"])) + ", or a weighted sum of them"
    elif _nested(tp) is not None:
        text = "`layer A..B { }` blocks" if typing.get_origin(tp) is list else "a nested block `{ }`"
    else:
        text = _type_name(tp)
    limits = _range(info)
    return f"{text}, {limits}" if limits else text


def _nested(tp) -> type[BaseModel] | None:
    """The nested block class of a key (`encoder { }`, `layer a..b { }`, an objective term)."""
    found = [c for c in _classes(tp) if not issubclass(c, S.Variant) and c is not S.ModelUse]
    return found[0] if found else None


def default_text(info) -> str:
    return _default(info)


# ------------------------------------------------------------------------------ the doc's rows


_CELL = re.compile(r"(?<!\\)\|")


def doc_rows() -> dict[str, list[str]]:
    """Row key -> its cells (type, default, check, at run time) for every table row of keys.md."""
    rows: dict[str, list[str]] = {}
    for line in KEYS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in _CELL.split(line)[1:-1]]
        if len(cells) == 5 and re.fullmatch(r"`[^`]+`", cells[0]):
            key = cells[0].strip("`")
            assert key not in rows, f"two rows for {key}"
            rows[key] = cells[1:]
    return rows


def test_every_key_of_the_schema_has_a_row_with_its_type_and_default():
    rows = doc_rows()
    keys = schema_keys()
    missing = [k for k, _ in keys if k not in rows]
    assert not missing, f"docs/keys.md has no row for {missing}"
    for key, info in keys:
        type_cell, default_cell, check_cell, run_cell = rows[key]
        assert type_cell == type_text(info), key
        assert default_cell == default_text(info), key
        assert check_cell and run_cell, f"{key}: say what check verifies and what the runtime does"
    stale = sorted(set(rows) - {k for k, _ in keys})
    assert not stale, f"docs/keys.md has rows for keys the schema does not define: {stale}"


def test_the_walk_reaches_nested_blocks_and_variant_arguments():
    keys = {k for k, _ in schema_keys()}
    for key in ("model.encoder.layers", "model.layer.first", "rl.rollouts.per_step", "train.model.stage",
                "tokenizer.kind: bpe(vocab:)", "rl.algorithm: ppo(clip:)", "model.head: classifier(classes:)",
                "model.position: rope(theta:)", "judge.score: probability(class:)", "train.objective.weight"):
        assert key in keys, key


def test_every_code_a_row_cites_is_registered():
    cited = {code for cells in doc_rows().values() for cell in cells for code in re.findall(r"LMS\d{3}", cell)}
    assert cited, "the rows cite no code"
    unknown = sorted(cited - set(CODES))
    assert not unknown, f"docs/keys.md cites codes lmspec does not have: {unknown}"


# ------------------------------------------------------------------------------ rows that claim a check

PRELUDE = """lmspec 1
tokenizer tok { kind: bytes }
data stories { source: builtin("tiny-stories") }
model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
"""
CLM = "train pre { model: gpt, objective: clm, data: stories }"
ENCODER = "model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }"
CRITIC = ("model critic { vocab: 262, context: 64, layers: 1, d_model: 64, heads: 4, head: classifier(classes: 2) }\n"
          "data reviews { source: builtin(\"tiny-reviews\"), label: \"sentiment\" }\n"
          "train fit { model: critic, objective: classify(label: \"sentiment\"), data: reviews }")
RL = f"{CRITIC}\njudge sentiment {{ model: critic from fit }}"  # rl rewarded by a judge: direct RLAIF

# (row key, the spec after PRELUDE, the code its row cites): each spec breaks that key alone
VIOLATIONS = [
    ("tokenizer.kind: bpe(vocab:)", "tokenizer small { kind: bpe(vocab: 100) }", "LMS043"),
    ("tokenizer.specials", "tokenizer odd { kind: bytes, specials: [pad, end] }", "LMS044"),
    ("tokenizer.kind: hf(path:)", 'tokenizer far { kind: hf("no/such/dir") }', "LMS087"),
    ("data.validation", 'data held { source: builtin("tiny-stories"), validation: 100% }', "LMS043"),
    ("data.source: text(path:)", 'data files { source: text("no/such/file.txt") }', "LMS087"),
    ("data.source: builtin(name:)", 'data mine { source: builtin("tiny-poems") }', "LMS044"),
    ("model.heads", "model odd { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 3 }", "LMS060"),
    ("model.kv_heads", "model gqa { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, kv_heads: 3 }",
     "LMS061"),
    ("model.attention: sliding(window:)",
     "model win { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, attention: sliding(window: 128) }",
     "LMS063"),
    ("model.encoder",
     "model dec { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, encoder { layers: 2 } }", "LMS066"),
    ("model.layer",
     "model deep { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, layer 1..2 { heads: 2 } }", "LMS048"),
    ("model.pad_id", "model padded { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, pad_id: 262 }",
     "LMS094"),
    ("model.head", "model twice { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: [lm, lm] }",
     "LMS069"),
    ("model.encoder.layers", "model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, "
     "encoder { heads: 4 }, decoder { layers: 2 } }", "LMS045"),
    ("model.vocab", "model narrow { vocab: 200, context: 64, layers: 2, d_model: 64, heads: 4 }\n"
     "train t { model: narrow, objective: clm, data: stories }", "LMS073"),
    ("train.objective", f"{ENCODER}\ntrain t {{ model: bert, objective: clm, data: stories }}", "LMS070"),
    ("train.objective: mlm(mask:)", f"{ENCODER}\ntrain t {{ model: bert, objective: mlm(mask: 150%), data: stories }}",
     "LMS043"),
    ("train.objective.weight", "train t { model: gpt, objective: 0 * clm, data: stories }", "LMS093"),
    ("train.grad_accum", "train t { model: gpt, objective: clm, data: stories, batch: 10, grad_accum: 3 }", "LMS089"),
    ("train.seq_len", "train t { model: gpt, objective: clm, data: stories, seq_len: 128 }", "LMS089"),
    ("train.data", "train t { model: gpt, objective: clm, data: gpt }", "LMS047"),
    ("train.precision", "train t { model: gpt, objective: clm, data: stories, precision: fp64 }", "LMS044"),
    ("train.tokenizer", "tokenizer other { kind: bytes }\ntrain t { model: gpt, objective: clm, data: stories }",
     "LMS074"),
    ("train.init", "model wide { vocab: 262, context: 64, layers: 2, d_model: 128, heads: 4 }\n"
     f"{CLM}\ntrain t {{ model: wide, init: pre, objective: clm, data: stories }}", "LMS075"),
    ("train.optimizer: adamw(lr:)", "train t { model: gpt, objective: clm, data: stories, optimizer: adamw(lr: 0) }",
     "LMS043"),
    ("judge.score: probability(class:)", f"{CRITIC}\njudge j {{ model: critic from fit, score: probability(class: 2) }}",
     "LMS077"),
    ("feedback.policy", f"{CRITIC}\n{ENCODER}\ntrain mlm {{ model: bert, objective: mlm, data: stories }}\n"
     "judge j { model: critic from fit }\n"
     "feedback f { policy: bert from mlm, prompts: stories.prefixes(tokens: 8), judge: j }", "LMS078"),
    ("feedback.samples", f"{CRITIC}\n{CLM}\njudge j {{ model: critic from fit }}\n"
     "feedback f { policy: gpt from pre, prompts: stories.prefixes(tokens: 8), judge: j, samples: 1 }", "LMS043"),
    ("rl.reward", f"{CLM}\nrl r {{ policy: gpt from pre, reward: pre, rollouts {{ prompts: stories.prefixes(tokens: 8) }} }}",
     "LMS076"),
    ("rl.rollouts.max_new_tokens", f"{RL}\n{CLM}\nrl r {{ policy: gpt from pre, reward: sentiment, "
     "rollouts { prompts: stories.prefixes(tokens: 8), max_new_tokens: 60 } }", "LMS089"),
    ("rl.algorithm: grpo(group:)", f"{RL}\n{CLM}\nrl r {{ policy: gpt from pre, reward: sentiment, algorithm: grpo(group: 1), "
     "rollouts { prompts: stories.prefixes(tokens: 8) } }", "LMS043"),
    ("*.allow", 'data quiet { source: builtin("tiny-stories"), allow: ["LMS060"] }', "LMS097"),
]


def test_the_sample_covers_every_block_kind():
    kinds = {key.split(".")[0].split(":")[0] for key, _, _ in VIOLATIONS}
    assert set(S.BLOCK_KINDS) <= kinds and len(VIOLATIONS) >= 15


def test_the_prelude_passes():
    report = check_text(PRELUDE + CLM, "keys.lmspec")
    assert report.ok, [f"{d.code} {d.message}" for d in report.diagnostics]


@pytest.mark.parametrize("key, spec, code", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_a_spec_that_breaks_the_key_draws_the_code_its_row_cites(key, spec, code):
    assert code in doc_rows()[key][2], f"the row of {key} does not cite {code}"
    report = check_text(PRELUDE + textwrap.dedent(spec) + "\n", "keys.lmspec")
    errors = {d.code for d in report.diagnostics if d.is_error}
    assert errors == {code}, [f"{d.code} {d.message}" for d in report.diagnostics]
