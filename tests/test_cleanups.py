"""Figures that check and the runtime (or check and `lmspec import-hf`) compute from one rule:
the validation split, a fraction written as spec text, and span_corruption's sentinel count."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec.compiler import schema as S
from lmspec.compiler.api import check_text
from lmspec.compiler.rules_models import _rotated
from lmspec.compiler.rules_settings import held_out
from lmspec.compiler.rules_tokens import span_counts
from lmspec.compiler.values import percent
from lmspec.runtime.data import order
from lmspec.runtime.objectives import Context, build_objective

# ------------------------------------------------------------------------------- the split


def test_the_runtime_splits_with_the_compilers_hash():
    from lmspec.compiler import split

    assert order.is_validation is split.is_validation and order.keyed_hash is split.keyed_hash


@pytest.mark.parametrize("seed, n, fraction", [(0, 20_000, 0.02), (7, 10_000, 0.05), (3, 6000, 0.5),
                                               (2**63 + 5, 1000, 0.999), (1, 300, 0.001), (0, 50, 0.0), (5, 0, 0.1)])
def test_held_out_counts_the_examples_the_runtime_holds_out(seed, n, fraction):
    assert held_out(seed, n, fraction) == int(order.is_validation(seed, np.arange(n), fraction).sum())


def test_the_split_and_the_epoch_order_are_the_ones_runs_were_made_with():
    # figures of the hash before it moved to compiler.split: a change would silently change which
    # examples a resumed run trains and validates on
    assert np.flatnonzero(order.is_validation(0, np.arange(40), 0.1)).tolist() == [17, 25, 30]
    assert held_out(42, 20_000, 0.02) == 423
    assert order.epoch_order(0, 0, 8).tolist() == [1, 0, 3, 5, 4, 7, 2, 6]
    assert order.epoch_order(0, 1, 8).tolist() == [7, 6, 2, 1, 3, 4, 5, 0]


# ------------------------------------------------------------------------------- fractions


@pytest.mark.parametrize("fraction, text", [(0.25, "25%"), (0.5, "50%"), (0.05, "5%"), (0.07, "7%"),
                                            (0.125, "12.5%"), (1e-5, "0.001%"), (1.0, "100%"),
                                            (28 / 96, "0.2916666666666667"), (1 / 3, "0.3333333333333333")])
def test_a_fraction_is_written_as_a_percentage_where_that_is_exact(fraction, text):
    assert percent(fraction) == text
    assert _read(text) == fraction


def test_a_fraction_in_a_message_is_rounded_where_it_is_not_a_whole_percentage():
    assert percent(28 / 96, digits=6) == "0.291667" and percent(0.25, digits=6) == "25%"
    with pytest.raises(ValueError, match="cannot be written in a spec"):
        percent(float("nan"))


def test_the_fraction_lms062_suggests_rotates_the_dimensions_it_names():
    for head_dim in (8, 24, 80, 96, 112, 160, 256):
        for dims in range(2, head_dim + 1, 2):
            assert _rotated(_read(percent(dims / head_dim, digits=6)), head_dim) == dims, (head_dim, dims)


def test_lms062_suggests_a_fraction_that_passes():
    model = "model m {{ vocab: 262, context: 64, layers: 1, d_model: 384, heads: 4, position: rope(fraction: {}) }}"
    found = [d for d in check_text("lmspec 1\n" + model.format("30%"), "t.lmspec").diagnostics if d.code == "LMS062"]
    assert [d.help for d in found] == ["try `fraction: 0.291667` (28 dimensions)"]
    assert "30% of head_dim 96 is 28.8" in found[0].message
    assert not check_text("lmspec 1\n" + model.format("0.291667"), "t.lmspec").diagnostics


def test_import_hf_writes_a_partial_rotary_factor_as_a_percentage():
    from lmspec.compiler.arch import PositionConfig
    from lmspec.compiler.hf.spec import _position

    assert _position(PositionConfig(kind="rope", theta=10_000.0, fraction=0.07)) == "rope(theta: 10_000, fraction: 7%)"


def _read(text: str) -> float:
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


# ------------------------------------------------------------------------------- span_corruption's sentinels

#: (seq_len, noise, mean_span): T5's defaults, a window shorter than seq_len (one-token spans),
#: noise clamped to leave one token, noise below one token, a span longer than the noise, a tie
#: that rounds to even (2.5 -> 2), and the shortest sequences a window fits in
SETTINGS = [(512, 0.15, 3.0), (128, 0.15, 3.0), (9, 0.25, 1.0), (64, 0.5, 1.0), (8, 0.95, 3.0),
            (16, 0.01, 3.0), (12, 0.15, 10.0), (10, 0.25, 1.0), (5, 0.15, 3.0), (3, 0.15, 3.0), (2048, 0.15, 3.0)]
MAX_SENTINELS = 1000
SPECIALS = {"pad": 0, "eos": 1}


def _runtime(seq_len: int, noise: float, mean_span: float, arch: str):
    """The runtime's SpanCorruption for these settings, or None where it raises at setup."""
    ctx = Context(seq_len=seq_len, vocab_size=2000, specials=SPECIALS, sentinels=list(range(2, 2 + MAX_SENTINELS)),
                  arch=arch)
    try:
        return build_objective(S.SpanCorruption(noise=noise, mean_span=mean_span), ctx)
    except ValueError as e:
        assert "cannot fit a corrupted window" in str(e)
        return None


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder"])
@pytest.mark.parametrize("seq_len, noise, mean_span", SETTINGS)
def test_check_counts_the_spans_the_runtime_cuts(seq_len, noise, mean_span, arch):
    sc = _runtime(seq_len, noise, mean_span, arch)
    counts = span_counts(seq_len, noise, mean_span, arch == "decoder")
    assert counts == (None if sc is None else (sc.window, sc.num_noise, sc.num_spans))


def _sentinel_problems(seq_len: int, noise: float, mean_span: float, arch: str, sentinels: int) -> list[str]:
    model = ("arch: encoder_decoder, encoder { layers: 1 }, decoder { layers: 1 }" if arch == "encoder_decoder"
             else "layers: 1, attention: prefix")
    text = (f"lmspec 1\ntokenizer tok {{ kind: bytes, sentinels: {sentinels} }}\n"
            'data text { source: builtin("tiny-stories") }\n'
            f"model m {{ {model}, vocab: tok.vocab_size, context: {seq_len}, d_model: 32, heads: 4 }}\n"
            f"train t {{ model: m, objective: span_corruption(noise: {noise}, mean_span: {mean_span}), data: text }}\n")
    return [d.message for d in check_text(text, "t.lmspec").diagnostics if d.code == "LMS071"]


@pytest.mark.parametrize("seq_len, noise, mean_span, arch", [
    (512, 0.15, 3.0, "decoder"), (512, 0.15, 3.0, "encoder_decoder"), (9, 0.25, 1.0, "encoder_decoder"),
    (8, 0.95, 3.0, "encoder_decoder"), (64, 0.5, 1.0, "decoder"), (16, 0.01, 3.0, "decoder")])
def test_check_asks_for_the_sentinels_the_runtime_needs_and_no_more(seq_len, noise, mean_span, arch):
    sc = _runtime(seq_len, noise, mean_span, arch)
    assert _sentinel_problems(seq_len, noise, mean_span, arch, sc.num_spans) == []
    found = _sentinel_problems(seq_len, noise, mean_span, arch, sc.num_spans - 1)
    assert len(found) == 1
    if sc.num_spans > 1:
        assert f"cuts about {sc.num_spans} spans from {sc.window} tokens" in found[0]


def test_a_prefix_decoder_cuts_its_spans_from_a_shorter_window():
    # input and target share the 512 tokens: a window of 465 (70 noise tokens, 23 spans), not 26
    # spans from all 512
    assert _sentinel_problems(512, 0.15, 3.0, "decoder", 22) == [
        "objective 'span_corruption' cuts about 23 spans from 465 tokens (the longest window whose input and "
        "target fit seq_len 512), but tokenizer 'tok' has 22 sentinels"]


def test_no_sentinel_count_where_no_window_fits():
    # a prefix decoder cannot fit a corrupted window in 3 tokens: LMS089 says so, not LMS071
    assert span_counts(3, 0.15, 3.0, True) is None
    assert _sentinel_problems(3, 0.15, 3.0, "decoder", 1) == []
