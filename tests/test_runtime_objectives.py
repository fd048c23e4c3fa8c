"""The training objectives: examples in, exact batch tensors out; masks against their
references (T5's span mask, transformers' MLM collator); the prefix-LM leak; and the loss
normalisation under gradient accumulation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmspec.compiler import costs
from lmspec.compiler import schema as S
from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.runtime.objectives import IGNORE, Context, build_objective, combinable, compose, model_inputs
from lmspec.runtime.objectives.nsp import truncate_pair
from lmspec.runtime.objectives.span_corruption import _unique_sentinels, noise_counts, random_spans_noise_mask

PAD, EOS, MASK, CLS, SEP = 0, 1, 2, 3, 4
SPECIALS = {"pad": PAD, "eos": EOS, "mask": MASK, "cls": CLS, "sep": SEP}
VOCAB = 64
SENTINELS = list(range(63, 53, -1))  # <extra_id_0> = 63, <extra_id_1> = 62, ... as T5's vocabulary
X = IGNORE


def ctx(seq_len: int = 12, **kw) -> Context:
    return Context(**{"seq_len": seq_len, "vocab_size": VOCAB, "specials": SPECIALS, "sentinels": SENTINELS, **kw})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def windows(n: int, length: int, seed: int = 0) -> list[dict]:
    """Windows of ordinary tokens (ids 5 .. 53), with no special or sentinel among them."""
    g = gen(seed)
    return [{"tokens": torch.randint(5, 54, (length,), generator=g)} for _ in range(n)]


def tiny_model(body: str, seed: int = 0, dtype: torch.dtype | None = None):
    report = check_text(f"lmspec 1\nmodel m {{ vocab: {VOCAB}, context: 16, d_model: 32, heads: 4, {body} }}")
    assert report.ok, [d.message for d in report.diagnostics]
    torch.manual_seed(seed)
    return build_model(report.models["m"], dtype=dtype).eval()


# ---- clm and the shared protocol -------------------------------------------------------------


def test_clm_predicts_every_next_token_and_needs_its_window():
    clm = build_objective(S.CLM(), ctx(seq_len=4))
    batch = clm.build([{"tokens": t(10, 11, 12, 13, 14)}], gen())
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13]]
    assert batch["labels"].tolist() == [[11, 12, 13, 14]]
    assert clm.count(batch) == 4
    assert clm.needed_length({"tokens": np.array([5, 5])}).tolist() == [4, 4]  # input positions: seq_len


def test_compose_puts_the_term_that_builds_first():
    c = ctx(random_document=lambda g: t(7, 8, 9))
    mlm, nsp = build_objective(S.MLM(), c), build_objective(S.NSP(), c)
    assert [o.kind for _, o in compose([(1.0, mlm), (0.5, nsp)])] == ["nsp", "mlm"]
    assert combinable(["mlm", "nsp"]) is None
    assert combinable(["clm", "nsp"]) == "'clm' cannot share a batch with 'nsp'"
    with pytest.raises(ValueError, match="clm \\+ nsp cannot be trained together"):
        compose([(1.0, build_objective(S.CLM(), c)), (1.0, nsp)])


# ---- mlm -------------------------------------------------------------------------------------


def test_mlm_masks_every_ordinary_token_and_no_special_one():
    mlm = build_objective(S.MLM(mask=1.0, replace=[1.0, 0.0, 0.0]), ctx(seq_len=6))
    batch = mlm.build([{"tokens": t(10, EOS, 11, 12, 63, 13)}], gen())  # 63 is a sentinel
    assert batch["input_ids"].tolist() == [[MASK, EOS, MASK, MASK, 63, MASK]]
    assert batch["labels"].tolist() == [[10, X, 11, 12, X, 13]]
    assert mlm.count(batch) == 4


def test_mlm_keep_and_random_replacements():
    tokens = [{"tokens": t(10, EOS, 11, 12, 13, 14)}]
    keep = build_objective(S.MLM(mask=1.0, replace=[0.0, 0.0, 1.0]), ctx(seq_len=6)).build(tokens, gen())
    assert keep["input_ids"].tolist() == [[10, EOS, 11, 12, 13, 14]]
    assert keep["labels"].tolist() == [[10, X, 11, 12, 13, 14]]
    mlm = build_objective(S.MLM(mask=1.0, replace=[0.0, 1.0, 0.0]), ctx(seq_len=6))
    ids = mlm.build([{"tokens": torch.full((4000,), 10)}], gen())["input_ids"]
    assert int(ids.min()) >= 5 and int(ids.max()) < VOCAB and not torch.isin(ids, t(*SENTINELS)).any()
    assert len(ids.unique()) == VOCAB - 5 - len(SENTINELS)  # uniform over every ordinary id


def test_mlm_masks_an_nsp_batch_but_not_its_padding_or_markers():
    c = ctx(seq_len=12, random_document=lambda g: t(20, 21, 22))
    nsp, mlm = build_objective(S.NSP(), c), build_objective(S.MLM(mask=1.0, replace=[1.0, 0.0, 0.0]), c)
    batch = mlm.augment(nsp.build([{"tokens": t(7, 8)}, {"tokens": t(7, 8, 9, 10, 11)}], gen()), gen())
    real = batch["attention_mask"]
    ids = batch["input_ids"]
    assert ((ids == MASK) == (real & ~torch.isin(ids, t(CLS, SEP)) & (ids != PAD))).all()
    assert (batch["labels"][~real] == X).all() and (ids[~real] == PAD).all()
    assert set(batch) == {"input_ids", "segment_ids", "attention_mask", "nsp_labels", "labels"}


def test_mlm_selects_at_least_one_position_per_batch():
    mlm = build_objective(S.MLM(mask=1e-12), ctx(seq_len=5))  # (mask: 0 is LMS043) selects nothing by chance
    batch = mlm.build([{"tokens": t(10, 11, EOS, 12, 13)}], gen())
    assert mlm.count(batch) == 1 and batch["labels"][0, 2] == X
    nothing = mlm.build([{"tokens": t(EOS, EOS, CLS, SEP, PAD)}], gen())  # no candidate: nothing selected
    assert mlm.count(nothing) == 0


def test_mlm_replace_must_be_three_fractions_summing_to_one():
    with pytest.raises(ValueError, match="summing to 100%"):
        build_objective(S.MLM(replace=[0.8, 0.1, 0.2]), ctx())
    with pytest.raises(ValueError, match="no 'mask' token"):
        build_objective(S.MLM(), Context(seq_len=4, vocab_size=VOCAB, specials={"pad": 0}))


def _mlm_rates(inputs: torch.Tensor, labels: torch.Tensor, original: torch.Tensor) -> tuple[float, float, float]:
    """(selected / candidates, [MASK] / selected, unchanged / selected)."""
    selected = labels != X
    n = int(selected.sum())
    return (n / original.numel(), int((inputs[selected] == MASK).sum()) / n,
            int((inputs[selected] == original[selected]).sum()) / n)


def test_mlm_rates_are_15_80_10_10_as_transformers_collator():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    names = ["[PAD]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(5, VOCAB)]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({w: i for i, w in enumerate(names)}, unk_token="[PAD]")),
        pad_token="[PAD]", eos_token="[EOS]", mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]")
    original = torch.randint(5, VOCAB, (64, 512), generator=gen(1))  # 32k ordinary tokens
    hf_inputs, hf_labels = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0).torch_mask_tokens(
        original.clone())
    # the same vocabulary without sentinels, so both draw random tokens from ids 5 .. 63
    c = Context(seq_len=512, vocab_size=VOCAB, specials=SPECIALS)
    ours = build_objective(S.MLM(), c).build([{"tokens": row} for row in original], gen(2))
    hf = _mlm_rates(hf_inputs, hf_labels, original)
    mine = _mlm_rates(ours["input_ids"], ours["labels"], original)
    unchanged = 0.1 + 0.1 / (VOCAB - 5)  # kept, or replaced by itself
    for rates in (hf, mine):
        assert rates == pytest.approx((0.15, 0.8, unchanged), abs=0.02)
    assert mine == pytest.approx(hf, abs=0.025)


# ---- nsp -------------------------------------------------------------------------------------


def test_nsp_pairs_exactly():
    # a two-token document can only be cut after its first token; the random document is [20]
    nsp = build_objective(S.NSP(), ctx(seq_len=8, random_document=lambda g: t(20)))
    batch = nsp.build([{"tokens": t(7, 8)}] * 32, gen())
    labels = batch["nsp_labels"]
    assert 8 <= int(labels.sum()) <= 24  # about half are random
    for row, seg, mask, label in zip(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], labels):
        assert row.tolist() == ([CLS, 7, SEP, 20, SEP] if label == 1 else [CLS, 7, SEP, 8, SEP])
        assert seg.tolist() == [0, 0, 0, 1, 1] and mask.all()
    assert nsp.count(batch) == 32 and nsp.unit == "pairs" and not nsp.token_level


def test_nsp_pads_to_the_longest_pair_and_truncates_to_seq_len():
    nsp = build_objective(S.NSP(), ctx(seq_len=8, random_document=lambda g: t(20, 21, 22, 23, 24, 25)))
    batch = nsp.build([{"tokens": t(7, 8)}] + [{"tokens": torch.arange(30, 50)}] * 16, gen(3))
    assert batch["input_ids"].shape == (17, 8)
    assert batch["input_ids"][0, 5:].tolist() == [PAD, PAD, PAD]
    assert batch["attention_mask"][0].tolist() == [True] * 5 + [False] * 3
    assert batch["segment_ids"][0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert set(batch["nsp_labels"][1:].tolist()) == {0, 1}
    for row, label in zip(batch["input_ids"][1:].tolist(), batch["nsp_labels"][1:].tolist()):
        assert row[0] == CLS and row[-1] == SEP and row.count(SEP) == 2  # 20 tokens cut to 5 + 3 markers
        a, b = row[1:row.index(SEP)], row[row.index(SEP) + 1:-1]
        assert a == list(range(a[0], a[-1] + 1)) and b == list(range(b[0], b[-1] + 1))
        if label == 0:  # is next: A ends where B starts, as in the document
            assert b[0] == a[-1] + 1
        else:  # random: a piece of the other document, as long as B would have been
            assert 20 <= b[0] and b[-1] <= 25


def test_truncate_pair_matches_berts_loop():
    def bert(la, lb, budget):  # truncate_seq_pair from BERT's create_pretraining_data.py
        while la + lb > budget:
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return la, lb

    for la in range(12):
        for lb in range(12):
            for budget in range(2, 14):
                assert truncate_pair(la, lb, budget) == bert(la, lb, budget), (la, lb, budget)
    assert truncate_pair(7, 3, 9) == (6, 3) and truncate_pair(6, 6, 9) == (5, 4)


def test_nsp_short_documents_get_a_random_second_segment():
    nsp = build_objective(S.NSP(), ctx(seq_len=8, random_document=lambda g: t(20, 21)))
    batch = nsp.build([{"tokens": t(7)}] * 4, gen())
    assert batch["nsp_labels"].tolist() == [1, 1, 1, 1]
    assert batch["input_ids"][0].tolist() == [CLS, 7, SEP, 20, 21, SEP]


def test_nsp_loss_count_and_accuracy():
    nsp = build_objective(S.NSP(), ctx(random_document=lambda g: t(20)))
    batch = {"nsp_labels": t(0, 1, 1)}
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    out = SimpleNamespace(nsp_logits=logits)
    expected = torch.nn.functional.cross_entropy(logits, batch["nsp_labels"], reduction="sum")
    assert torch.allclose(nsp.loss(out, batch), expected)
    assert nsp.metrics(out, batch) == {"nsp_accuracy": 2.0}


def test_mlm_plus_nsp_run_through_a_bert():
    model = tiny_model("arch: encoder, layers: 1, segments: 2, pooler: true, head: [mlm, nsp]")
    docs = [torch.arange(10, 20), torch.arange(30, 36)]
    c = ctx(seq_len=16, random_document=lambda g: docs[int(torch.randint(2, (), generator=g))])
    terms = compose([(1.0, build_objective(S.MLM(), c)), (0.5, build_objective(S.NSP(), c))])
    batch = terms[0][1].build([{"tokens": d} for d in docs], gen())
    for _, term in terms[1:]:
        batch = term.augment(batch, gen(1))
    out = model(**model_inputs(batch))
    for _, term in terms:
        assert torch.isfinite(term.loss(out, batch)) and term.count(batch) > 0


# ---- span corruption -------------------------------------------------------------------------


def t5_random_spans_noise_mask(length, noise_density, mean_noise_span_length, shuffle):
    """T5's random_spans_noise_mask (t5/data/preprocessors.py), line for line in numpy: the
    peer of ours. `shuffle(x)` stands for seqio.stateless_shuffle."""
    if noise_density == 0.0:
        return np.zeros(length, bool)
    orig_length = length
    length = max(length, 2)  # increase length to avoid degeneracy
    num_noise_tokens = int(np.round(length * noise_density))
    # avoid degeneracy by ensuring positive numbers of noise and nonnoise tokens
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(num_noise_tokens / mean_noise_span_length))
    num_noise_spans = max(num_noise_spans, 1)  # avoid degeneracy by ensuring positive number of noise spans
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments):
        first_in_segment = np.pad(shuffle((np.arange(num_items - 1) < num_segments - 1).astype(np.int64)), [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id)  # tf.math.segment_sum(ones_like(segment_id), segment_id)

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved_span_lengths = np.reshape(np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1),
                                          [num_noise_spans * 2])
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros(length, np.int64)
    np.add.at(span_start_indicator, span_starts, 1)  # tf.math.unsorted_segment_sum
    span_num = np.cumsum(span_start_indicator)
    is_noise = np.equal(span_num % 2, 1)
    return is_noise[:orig_length]


def runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """(is noise, length) of each run of a mask."""
    out: list[tuple[bool, int]] = []
    for m in mask.tolist():
        if out and out[-1][0] == m:
            out[-1] = (m, out[-1][1] + 1)
        else:
            out.append((m, 1))
    return out


CASES = [(512, 0.15, 3.0), (568, 0.15, 3.0), (100, 0.5, 2.0), (37, 0.3, 1.0), (12, 0.15, 3.0), (8, 0.75, 3.0),
         (64, 0.01, 8.0), (9, 0.5, 1.5)]


@pytest.mark.parametrize("length,noise,mean_span", CASES)
def test_span_mask_is_t5s(length, noise, mean_span):
    rng = np.random.default_rng(length)
    reference = t5_random_spans_noise_mask(length, noise, mean_span, rng.permutation)
    ours = random_spans_noise_mask(length, noise, mean_span, gen(length)).numpy()
    # the same counts, the same alternation, beginning with non-noise and ending with noise
    assert ours.sum() == reference.sum() == noise_counts(length, noise, mean_span)[0]
    assert len(runs(ours)) == len(runs(reference)) == 2 * noise_counts(length, noise, mean_span)[1]
    assert [m for m, _ in runs(ours)] == [False, True] * (len(runs(ours)) // 2)
    # and the same mask when the reference shuffles with the permutations ours draws
    g = gen(length)
    same_draws = t5_random_spans_noise_mask(length, noise, mean_span,
                                            lambda x: x[torch.randperm(len(x), generator=g).numpy()])
    assert (random_spans_noise_mask(length, noise, mean_span, gen(length)).numpy() == same_draws).all()


def test_span_mask_with_more_spans_than_other_tokens():
    # T5 fails here (7 noise tokens in 2 spans, but 1 non-noise token to go before them): one span
    assert noise_counts(8, 1.0, 3.0) == (7, 1)
    assert runs(random_spans_noise_mask(8, 1.0, 3.0, gen()).numpy()) == [(False, 1), (True, 7)]


def test_unique_sentinels_as_t5():
    a, b, c, d, e, f, g, h = range(10, 18)
    tokens, noise = t(a, b, c, d, e, f, g, h), torch.tensor([0, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    s = t(63, 62, 61)
    assert _unique_sentinels(tokens, noise, s).tolist() == [a, b, 63, e, f, 62, h]
    assert _unique_sentinels(tokens, ~noise, s).tolist() == [63, c, d, 62, g, 61]


def test_span_corruption_batch_exactly():
    # 12 tokens at 15%: round(1.8) = 2 noise tokens in round(2 / 3) = 1 span, which T5's layout
    # (non-noise first, noise last) puts at the end of the window
    sc = build_objective(S.SpanCorruption(), ctx(seq_len=12, decoder_start_id=PAD))
    batch = sc.build([{"tokens": torch.arange(10, 22)}], gen())
    assert batch["input_ids"].tolist() == [list(range(10, 20)) + [63, EOS]]
    assert batch["attention_mask"].tolist() == [[True] * 12]
    assert batch["labels"].tolist() == [[63, 20, 21, EOS]]
    assert batch["decoder_input_ids"].tolist() == [[PAD, 63, 20, 21]]
    assert batch["decoder_attention_mask"].tolist() == [[True] * 4]
    assert sc.count(batch) == 4


def _decoder_len(seq_len: int, noise: float, mean_span: float) -> int:
    spec = SimpleNamespace(objective=[SimpleNamespace(objective=S.SpanCorruption(noise=noise, mean_span=mean_span))])
    return costs._decoder_len(SimpleNamespace(arch="encoder_decoder"), spec, seq_len)


@pytest.mark.parametrize("seq_len,noise,mean_span", [(512, 0.15, 3.0), (64, 0.15, 3.0), (37, 0.3, 2.5), (16, 0.5, 4)])
def test_span_corruption_shapes_are_the_checked_ones_and_spans_come_back(seq_len, noise, mean_span):
    sentinels = list(range(999, 899, -1))  # 100, as T5's vocabulary
    sc = build_objective(S.SpanCorruption(noise=noise, mean_span=mean_span),
                         ctx(seq_len=seq_len, vocab_size=1000, sentinels=sentinels))
    examples = windows(4, sc.reads.length)
    batch = sc.build(examples, gen())
    assert sc.reads.length == seq_len and batch["input_ids"].shape == (4, seq_len)
    assert batch["labels"].shape == batch["decoder_input_ids"].shape == (4, _decoder_len(seq_len, noise, mean_span))
    assert sc.decoder_length == _decoder_len(seq_len, noise, mean_span)
    n, spans = noise_counts(seq_len, noise, mean_span)
    for e, ids, real, labels in zip(examples, batch["input_ids"], batch["attention_mask"], batch["labels"]):
        ids, labels = ids[real].tolist(), labels.tolist()
        assert ids[-1] == EOS and labels[-1] == EOS and sc.count(batch) == 4 * (n + spans + 1)
        # sentinels in order in both, one per span
        assert [i for i in ids if i in sentinels] == sentinels[:spans]
        assert [i for i in labels if i in sentinels] == sentinels[:spans]
        # each sentinel of the input filled with its span from the target gives the window back
        pieces, span = {}, None
        for i in labels[:-1]:
            if i in sentinels:
                span = pieces.setdefault(i, [])
            else:
                span.append(i)
        restored = [x for i in ids[:-1] for x in (pieces[i] if i in sentinels else [i])]
        assert restored == e["tokens"].tolist()


def test_span_corruption_with_one_token_spans_reads_a_shorter_window():
    # mean_span 1: every noise token is its own span, so the input is the window plus EOS;
    # a window of seq_len - 1 makes it fit
    sc = build_objective(S.SpanCorruption(noise=0.25, mean_span=1.0), ctx(seq_len=9))
    assert sc.reads.length == 8
    batch = sc.build(windows(2, 8), gen())
    assert batch["input_ids"].shape == (2, 9) and batch["attention_mask"].all()
    assert batch["labels"].shape == (2, 2 + 2 + 1)


def test_span_corruption_needs_a_sentinel_per_span():
    c = Context(seq_len=512, vocab_size=VOCAB, specials=SPECIALS, sentinels=SENTINELS)
    with pytest.raises(ValueError, match="cuts 26 spans from 512 tokens, but the tokenizer has 10 sentinels"):
        build_objective(S.SpanCorruption(), c)


def test_span_corruption_runs_through_a_t5():
    model = tiny_model("arch: encoder_decoder, encoder { layers: 1 }, decoder { layers: 1 }")
    sc = build_objective(S.SpanCorruption(noise=0.3), ctx(seq_len=16))
    batch = sc.build(windows(3, sc.reads.length), gen())
    out = model(**model_inputs(batch))
    assert out.logits.shape[:2] == batch["labels"].shape and torch.isfinite(sc.loss(out, batch))


def test_span_corruption_on_a_prefix_decoder():
    sc = build_objective(S.SpanCorruption(), ctx(seq_len=16, arch="decoder"))
    assert sc.reads.length == 13  # 13 - 2 + 1 + 1 inputs, 2 + 1 + 1 targets, minus the last = 16
    batch = sc.build([{"tokens": torch.arange(10, 23)}], gen())
    inputs = list(range(10, 21)) + [63, EOS]
    assert batch["input_ids"].tolist() == [inputs + [63, 21, 22]]
    assert batch["prefix_lengths"].tolist() == [13]
    assert batch["labels"].tolist() == [[X] * 12 + [63, 21, 22, EOS]]
    model = tiny_model("arch: decoder, layers: 1, attention: prefix")
    assert torch.isfinite(sc.loss(model(**model_inputs(batch)), batch))


# ---- prefix lm -------------------------------------------------------------------------------


def test_prefix_lm_targets_start_at_the_last_prefix_token():
    plm = build_objective(S.PrefixLM(), ctx(seq_len=4))
    batch = plm.build([{"tokens": t(10, 11, 12, 13, 14)}] * 16, gen())
    expected = {1: [11, 12, 13, 14], 2: [X, 12, 13, 14], 3: [X, X, 13, 14]}  # p: labels
    assert set(batch["prefix_lengths"].tolist()) == {1, 2, 3}  # f = 50%: p uniform in 1 .. T - 1
    for p, labels in zip(batch["prefix_lengths"].tolist(), batch["labels"].tolist()):
        assert labels == expected[p]
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13]] * 16
    assert plm.count(batch) == sum(4 - p + 1 for p in batch["prefix_lengths"].tolist())


@pytest.mark.parametrize("f", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_prefix_lm_mean_prefix_fraction(f):
    plm = build_objective(S.PrefixLM(prefix=f), ctx(seq_len=200))
    p = plm.build([{"tokens": torch.zeros(201, dtype=torch.long)}] * 2000, gen())["prefix_lengths"]
    assert float(p.double().mean()) / 200 == pytest.approx(f, abs=0.01)
    assert int(p.min()) >= 1 and int(p.max()) <= 199


def test_prefix_lm_labels_never_leak_through_the_prefix():
    model = tiny_model("arch: decoder, layers: 2, attention: prefix")
    plm = build_objective(S.PrefixLM(), ctx(seq_len=12))
    batch = plm.build(windows(4, 13), gen(5))
    logits = model(**model_inputs(batch)).logits  # (B, T, V)
    B, T = batch["input_ids"].shape
    checked = 0
    for b in range(B):
        for i in range(T - 1):  # position i predicts input i + 1
            changed = batch["input_ids"].clone()
            changed[b, i + 1] = 5 if changed[b, i + 1] != 5 else 6
            moved = model(**model_inputs({**batch, "input_ids": changed})).logits[b, i]
            if batch["labels"][b, i] != X:
                assert torch.allclose(moved, logits[b, i], atol=1e-6), (b, i)
                checked += 1
            else:  # inside the prefix the model does see it: the test can tell
                assert not torch.allclose(moved, logits[b, i], atol=1e-6), (b, i)
    assert checked > 0


# ---- sft -------------------------------------------------------------------------------------


def test_sft_batch_exactly():
    sft = build_objective(S.SFT(), ctx(seq_len=8))
    batch = sft.build([{"prompt": t(5, 6, 7), "response": t(8, 9)}, {"prompt": t(5), "response": t(8)}], gen())
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 8, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [[X, X, 8, 9, EOS], [8, EOS, X, X, X]]
    assert batch["attention_mask"].tolist() == [[True] * 5, [True, True, False, False, False]]
    assert sft.count(batch) == (2 + 1) + (1 + 1)  # response tokens and their EOS


def test_sft_rejects_a_sequence_longer_than_seq_len():
    sft = build_objective(S.SFT(), ctx(seq_len=4))
    sft.build([{"prompt": t(5, 6), "response": t(7, 8)}], gen())  # 5 tokens: 4 inputs, fits
    with pytest.raises(ValueError, match="an sft example of 6 tokens .* does not fit seq_len 4: it needs seq_len 5"):
        sft.build([{"prompt": t(5, 6, 7), "response": t(8, 9)}], gen())
    assert sft.needed_length({"prompt": np.array([2, 3]), "response": np.array([2, 2])}).tolist() == [4, 5]


def test_sft_loss_is_only_on_response_tokens():
    sft = build_objective(S.SFT(), ctx(seq_len=8))
    batch = sft.build([{"prompt": t(5, 6, 7), "response": t(8, 9)}], gen())
    logits = torch.randn(1, 5, VOCAB, requires_grad=True)
    sft.loss(SimpleNamespace(logits=logits), batch).backward()
    assert logits.grad.abs().sum(-1)[0].ne(0).tolist() == [False, False, True, True, True]


# ---- classify --------------------------------------------------------------------------------


def test_classify_batch_loss_and_accuracy():
    cls = build_objective(S.Classify(label="sentiment"), ctx(seq_len=4))
    assert cls.reads.kind == "records" and cls.reads.fields == ("text",) and cls.reads.label == "sentiment"
    batch = cls.build([{"text": t(5, 6, 7), "label": 1}, {"text": t(8), "label": 0}], gen())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["class_labels"].tolist() == [1, 0] and cls.count(batch) == 2
    logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    out = SimpleNamespace(class_logits=logits)
    assert torch.allclose(cls.loss(out, batch), torch.nn.functional.cross_entropy(logits, t(1, 0), reduction="sum"))
    assert cls.metrics(out, batch) == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="a classify example of 5 tokens does not fit seq_len 4"):
        cls.build([{"text": t(5, 6, 7, 8, 9), "label": 0}], gen())
    assert cls.needed_length({"text": np.array([3, 9])}).tolist() == [3, 9]


def test_classify_runs_through_an_encoder():
    model = tiny_model("arch: encoder, layers: 1, head: classifier(classes: 3)")
    cls = build_objective(S.Classify(), ctx(seq_len=8))
    batch = cls.build([{"text": t(5, 6, 7), "label": 2}, {"text": t(8, 9, 10, 11, 12), "label": 0}], gen())
    out = model(**model_inputs(batch))
    assert out.class_logits.shape == (2, 3) and torch.isfinite(cls.loss(out, batch))


# ---- every objective -------------------------------------------------------------------------


def _examples(kind: str, c: Context) -> list[dict]:
    if kind == "nsp":
        return [{"tokens": torch.arange(10, 10 + n)} for n in (2, 5, 9)]
    if kind == "sft":
        return [{"prompt": t(5, 6, 7), "response": t(8, 9)}, {"prompt": t(5), "response": t(10, 11, 12)}]
    if kind == "classify":
        return [{"text": t(5, 6, 7), "label": 1}, {"text": t(8), "label": 0}]
    length = build_objective(SPECS[kind], c).reads.length
    return windows(3, length)


SPECS = {"clm": S.CLM(), "mlm": S.MLM(), "nsp": S.NSP(), "span_corruption": S.SpanCorruption(noise=0.3),
         "prefix_lm": S.PrefixLM(), "sft": S.SFT(), "classify": S.Classify()}


@pytest.mark.parametrize("kind", list(SPECS))
def test_batches_are_deterministic_cpu_long_and_bool(kind):
    c = ctx(seq_len=12, random_document=lambda g: torch.arange(30, 30 + int(torch.randint(3, 9, (), generator=g))))
    obj = build_objective(SPECS[kind], c)
    examples = _examples(kind, c)
    first, again = obj.build(examples, gen(7)), obj.build(examples, gen(7))
    assert first.keys() == again.keys()
    for key, value in first.items():
        assert torch.equal(value, again[key]), key
        assert value.device.type == "cpu"
        assert value.dtype == (torch.bool if key.endswith("attention_mask") else torch.long), key
    assert obj.count(first) > 0


# ---- loss normalisation under gradient accumulation ------------------------------------------


def test_grad_accumulation_gives_the_gradients_of_one_big_batch():
    model = tiny_model("arch: decoder, layers: 2")
    sft = build_objective(S.SFT(), ctx(seq_len=16))
    g = gen(3)
    examples = [{"prompt": torch.randint(5, 54, (p,), generator=g), "response": torch.randint(5, 54, (r,), generator=g)}
                for p, r in [(1, 9), (6, 1), (3, 3), (8, 6), (2, 2), (5, 10), (1, 1), (4, 7)]]

    def grads(micro_batches: list[list[dict]], normalise) -> list[torch.Tensor]:
        model.zero_grad()
        batches = [sft.build(m, gen()) for m in micro_batches]
        total = sum(sft.count(b) for b in batches)  # the engine counts the whole step first
        for b in batches:
            normalise(sft.loss(model(**model_inputs(b)), b), sft.count(b), total, len(batches)).backward()
        return [p.grad.clone() for p in model.parameters()]

    def engine_rule(loss_sum, count, total, n):
        return loss_sum / total

    one = grads([examples], engine_rule)
    four = grads([examples[i:i + 2] for i in range(0, 8, 2)], engine_rule)
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # averaging each micro-batch's mean instead weighs a token by its micro-batch's size
    naive = grads([examples[i:i + 2] for i in range(0, 8, 2)], lambda s, count, total, n: s / count / n)
    assert max(float((a - b).abs().max()) for a, b in zip(one, naive)) > 1e-4
