"""Periodic layer overrides: `layer every N { }`, `layer every N from K { }` and
`layer A..B every N { }`, from the text to the layers they reach, the errors that say where,
and the import writer's compact blocks (Gemma 2 alternates sliding and global layers; Gemma 3
makes every sixth layer global) reading back as the same architecture."""

from __future__ import annotations

import dataclasses

import pytest

from lmspec.compiler.api import check_text, load_arch
from lmspec.compiler.arch import AttentionConfig
from lmspec.compiler.hf import spec_from_arch
from lmspec.diagnostics import render_text
from lmspec.grammar import ast
from lmspec.grammar.parser import parse

HEADER = "lmspec 1\n"
BASE = "vocab: 101, context: 64, d_model: 32, heads: 4"


def model(body: str, layers: int = 6, name: str = "m") -> str:
    return f"{HEADER}model {name} {{\n  {BASE}, layers: {layers}, attention: sliding(window: 16)\n{body}}}\n"


def attention_kinds(text: str, name: str = "m", stack: str = "decoder") -> list[str]:
    return [L.attention.kind for L in getattr(load_arch(text, name), stack).layers]


def errors_of(text: str) -> list:
    return [d for d in check_text(text, "every.lmspec").diagnostics if d.is_error]


# ---- parsing ----------------------------------------------------------------------------------


def overrides_of(selector: str) -> ast.LayerOverride:
    tree, diagnostics = parse(f"{HEADER}model m {{ {selector} {{ d_ff: 64 }} }}\n", "p.lmspec")
    assert diagnostics == []
    (override,) = tree.blocks[0].entries
    return override


@pytest.mark.parametrize("selector, first, last, every", [
    ("layer 3", 3, 3, 1),
    ("layer 0..3", 0, 3, 1),
    ("layer every 2", 0, None, 2),
    ("layer every 6 from 5", 5, None, 6),
    ("layer 1..9 every 4", 1, 9, 4),
])
def test_each_selector_parses_to_its_first_last_and_step(selector, first, last, every):
    o = overrides_of(selector)
    assert (o.first, o.last, o.every) == (first, last, every)
    assert ast.layer_selector(o.first, o.last, o.every) == selector  # as written, for messages
    start = len(HEADER) + len("model m { layer ")
    assert (o.range_span.start, o.range_span.end) == (start, start + len(selector) - len("layer "))


def test_every_is_a_keyword_only_after_layer():
    text = (f"{HEADER}every every {{ every: every, eval_every: 2, from_every: 1 }}\n"
            f"model m {{ every: 1, layer 0 {{ every: 2 }} }}\n")
    tree, diagnostics = parse(text, "p.lmspec")
    assert diagnostics == []
    kind_block, model_block = tree.blocks
    assert (kind_block.kind.name, kind_block.name.name) == ("every", "every")
    assert [f.key.name for f in kind_block.entries] == ["every", "eval_every", "from_every"]
    assert kind_block.entries[0].value == ast.Name("every", kind_block.entries[0].value.span)
    assert model_block.entries[1].entries[0].key.name == "every"


@pytest.mark.parametrize("selector, col", [
    ("layer every", 23), ("layer every x", 23), ("layer every 2 from", 30), ("layer 0..3 every", 28),
])
def test_every_and_from_need_their_numbers(selector, col):
    (d,) = parse(f"{HEADER}model m {{ {selector} {{ d_ff: 64 }} }}\n", "p.lmspec")[1]
    assert (d.code, d.span.line, d.span.col) == ("LMS001", 2, col)
    assert d.message.startswith("`every` and `from` each take a layer number, found ")
    assert "layer every 6 from 5" in d.help


def test_a_step_must_be_a_whole_number():
    (d,) = parse(f"{HEADER}model m {{ layer every 1.5 {{ d_ff: 64 }} }}\n", "p.lmspec")[1]
    assert (d.code, d.span.col, d.message) == ("LMS001", 23, "a layer number must be a whole number, found '1.5'")


# ---- the layers each form reaches ----------------------------------------------------------------


def test_every_two_from_one_alternates_like_gemma_2():
    text = model("  layer every 2 from 1 { attention: causal }\n")
    assert attention_kinds(text) == ["sliding", "causal"] * 3


def test_every_six_from_five_is_gemma_3s_five_local_to_one_global():
    text = model("  layer every 6 from 5 { attention: causal }\n", layers=14)
    assert [i for i, k in enumerate(attention_kinds(text)) if k == "causal"] == [5, 11]


def test_every_n_starts_at_layer_zero():
    d_ff = [L.d_ff for L in load_arch(model("  layer every 3 { d_ff: 64 }\n", layers=7)).decoder.layers]
    assert d_ff == [64, 128, 128, 64, 128, 128, 64]


def test_a_range_every_n_stops_at_its_end():
    d_ff = [L.d_ff for L in load_arch(model("  layer 1..5 every 2 { d_ff: 64 }\n", layers=8)).decoder.layers]
    assert d_ff == [128, 64, 128, 64, 128, 64, 128, 128]


def test_later_overrides_win_in_source_order():
    first = "  layer every 2 { d_ff: 64 }\n  layer 0..1 { d_ff: 96 }\n"
    assert [L.d_ff for L in load_arch(model(first, layers=5)).decoder.layers] == [96, 96, 64, 128, 64]
    last = "  layer 0..1 { d_ff: 96 }\n  layer every 2 { d_ff: 64 }\n"
    assert [L.d_ff for L in load_arch(model(last, layers=5)).decoder.layers] == [64, 96, 64, 128, 64]


def test_a_periodic_override_sets_only_its_keys():
    text = model("  layer every 2 { d_ff: 64 }\n  layer every 3 { attention: causal }\n")
    layers = load_arch(text).decoder.layers
    assert [(L.d_ff, L.attention.kind) for L in layers] == [
        (64, "causal"), (128, "sliding"), (64, "sliding"), (128, "causal"), (64, "sliding"), (128, "sliding")]


def test_extends_applies_the_bases_overrides_first():
    text = (model("  layer every 2 from 1 { attention: causal, d_ff: 64 }\n", name="base")
            + "model child extends base {\n  layer 3 { attention: sliding(window: 8) }\n"
              "  layer every 4 { d_ff: 96 }\n}\n")
    layers = load_arch(text, "child").decoder.layers
    assert [(L.attention.kind, L.attention.window, L.d_ff) for L in layers] == [
        ("sliding", 16, 96), ("causal", None, 64), ("sliding", 16, 128),
        ("sliding", 8, 64), ("sliding", 16, 96), ("causal", None, 64)]
    assert attention_kinds(text, "base") == ["sliding", "causal"] * 3


ENCODER_DECODER = f"""{HEADER}model s {{
  arch: encoder_decoder, {BASE}, position: relative(buckets: 8, max_distance: 32)
  encoder {{ layers: 4, layer every 2 {{ d_ff: 64 }} }}
  decoder {{
    layers: 5
    layer every 2 from 1 {{ attention: sliding(window: 8) }}
    layer 0..4 every 4 {{ d_ff: 96 }}
  }}
}}
"""


def test_each_stack_of_an_encoder_decoder_counts_its_own_layers():
    arch = load_arch(ENCODER_DECODER, "s")
    assert [L.d_ff for L in arch.encoder.layers] == [64, 128, 64, 128]
    assert [L.attention.kind for L in arch.encoder.layers] == ["bidirectional"] * 4
    assert [L.attention.kind for L in arch.decoder.layers] == ["causal", "sliding"] * 2 + ["causal"]
    assert [L.d_ff for L in arch.decoder.layers] == [96, 128, 128, 128, 96]


def test_a_diagnostic_about_a_layer_points_at_the_periodic_override_that_set_it():
    text = (model("  layer every 2 from 1 { attention: bidirectional }\n")
            + "tokenizer tok { kind: bytes }\ndata d { source: builtin(\"tiny-stories\") }\n"
              "train t { model: m, objective: clm, data: d, steps: 1, batch: 1 }\n")
    (d,) = [d for d in errors_of(text) if d.code == "LMS070"]
    assert "layer 1 of 'm' has bidirectional attention" in d.message
    (label,) = d.labels  # the value of `attention` in `layer every 2 from 1 { ... }`
    assert (label.span.line, label.span.col, label.message) == (4, 37, "layer 1 has bidirectional attention")


def test_a_warning_names_the_override_as_written():
    text = f"{HEADER}model m {{\n  {BASE}, layers: 4\n  layer every 2 from 1 {{ position: none }}\n}}\n"
    (d,) = [d for d in check_text(text, "every.lmspec").diagnostics if d.code == "LMS115"]
    assert "`layer every 2 from 1 { }`" in d.message and (d.span.line, d.span.col) == (4, 36)


# ---- errors -----------------------------------------------------------------------------------


def test_every_zero_is_an_error_at_the_selector():
    (d,) = errors_of(model("  layer every 0 { attention: causal }\n"))
    assert (d.code, d.span.file, d.span.line, d.span.col) == ("LMS048", "every.lmspec", 4, 9)
    assert d.message == "`layer every 0` names no layer: the step after `every` must be at least 1"
    assert d.help == "`layer every 2 { }` applies to layers 0, 2, 4, ...; `layer every 1 { }` to all of them"


def test_a_start_past_the_last_layer_is_an_error_like_a_range_past_it():
    (d,) = errors_of(model("  layer 1..2 { d_ff: 64 }\n  layer every 2 from 6 { attention: causal }\n"))
    assert (d.code, d.span.line, d.span.col) == ("LMS048", 5, 9)
    assert d.message == "`layer every 2 from 6` starts at layer 6, outside the stack of 6 layers (0..5)"
    assert d.help == "the last layer is 5: start `from` a layer at most 5"
    (d,) = errors_of(model("  layer 0..6 every 2 { attention: causal }\n"))
    assert (d.code, d.span.line, d.message) == ("LMS048", 4, "layer 6 is outside the stack of 6 layers (0..5)")


def test_an_empty_range_every_n_suggests_the_ends_swapped():
    (d,) = errors_of(model("  layer 4..1 every 2 { d_ff: 64 }\n"))
    assert (d.code, d.message, d.help) == ("LMS048", "layer range 4..1 is empty", "write `layer 1..4 every 2`")


def test_the_errors_in_a_stack_count_that_stacks_layers():
    text = ENCODER_DECODER.replace("every 2 from 1", "every 2 from 5").replace("layer every 2 {", "layer every 0 {")
    found = sorted((d.span.line, d.span.col, d.message) for d in errors_of(text))
    assert found == [
        (4, 30, "`layer every 0` names no layer: the step after `every` must be at least 1"),
        (7, 11, "`layer every 2 from 5` starts at layer 5, outside the stack of 5 layers (0..4)"),
    ]
    shown = render_text(errors_of(text)[:1], {"every.lmspec": text}, colour=False)
    assert shown.startswith("every.lmspec:4:30: error[LMS048]: `layer every 0` names no layer")
    assert "  encoder { layers: 4, layer every 0 { d_ff: 64 } }\n  |" in shown and "= help: " in shown


# ---- the import writer ------------------------------------------------------------------------


def arch_with(attention: list[AttentionConfig], name: str = "g"):
    """A Mistral/Gemma-like decoder whose layers have the given attention, one per layer."""
    base = load_arch(f"{HEADER}model {name} {{ {BASE}, layers: {len(attention)}, position: rope, norm: rmsnorm, "
                     f"activation: swiglu, bias: false }}\n", name)
    layers = tuple(dataclasses.replace(L, attention=a) for L, a in zip(base.decoder.layers, attention))
    return dataclasses.replace(base, decoder=dataclasses.replace(base.decoder, layers=layers))


LOCAL, GLOBAL = AttentionConfig("sliding", window=16), AttentionConfig("causal")


def override_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("layer ")]


@pytest.mark.parametrize("pattern, lines", [
    # Gemma 2: local and global alternate; the first layer's (local) is the model's on a tie
    ([LOCAL, GLOBAL] * 3, ["layer every 2 from 1 { attention: causal }"]),
    # Gemma 3: five local to one global
    ([LOCAL] * 5 + [GLOBAL] + [LOCAL] * 5 + [GLOBAL] + [LOCAL] * 5 + [GLOBAL] + [LOCAL] * 2,
     ["layer every 6 from 5 { attention: causal }"]),
    ([GLOBAL, LOCAL] * 3 + [LOCAL] * 3, ["layer 0..4 every 2 { attention: causal }"]),
    ([GLOBAL, LOCAL, GLOBAL, LOCAL, LOCAL, LOCAL],
     ["layer 0 { attention: causal }", "layer 2 { attention: causal }"]),  # two are written one by one
    ([GLOBAL, GLOBAL, LOCAL, LOCAL, LOCAL, GLOBAL, LOCAL],
     ["layer 0..1 { attention: causal }", "layer 5 { attention: causal }"]),  # runs, as before
])
def test_the_writer_compacts_periodic_layers_and_reads_back_the_same(pattern, lines):
    arch = arch_with(pattern)
    text = spec_from_arch(arch, comment="periodic")
    assert override_lines(text) == lines
    assert "  attention: sliding(window: 16)\n" in text
    assert load_arch(text, "g") == arch


def test_the_writer_orders_blocks_of_different_values_by_their_first_layer():
    wide = AttentionConfig("sliding", window=32)
    arch = arch_with([LOCAL, GLOBAL, wide, GLOBAL, LOCAL, GLOBAL, LOCAL])
    text = spec_from_arch(arch, comment="periodic")
    assert override_lines(text) == ["layer every 2 from 1 { attention: causal }",
                                    "layer 2 { attention: sliding(window: 32) }"]
    assert load_arch(text, "g") == arch


def test_the_writer_compacts_inside_the_stacks_of_an_encoder_decoder():
    # the encoder's 7 layers: d_ff 64 on 0, 2, 4, 6 is the stack's value, 128 the exception
    arch = load_arch(ENCODER_DECODER.replace("layers: 4,", "layers: 7,").replace("layers: 5", "layers: 7"), "s")
    text = spec_from_arch(arch, comment="periodic")
    assert "  encoder {\n    layers: 7\n    attention: bidirectional\n    layer every 2 from 1 { d_ff: 128 }\n" in text
    assert override_lines(text)[1:] == ["layer 0 { d_ff: 96 }", "layer every 2 from 1 { attention: sliding(window: 8) }",
                                        "layer 4 { d_ff: 96 }"]
    assert load_arch(text, "s") == arch
