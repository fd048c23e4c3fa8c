"""The token an encoder-decoder's decoder starts from: `decoder_start_id` (BART: 2, its eos), else
the pad id (T5). `generate`, training's shifted targets, `lmspec sample` and the Hugging Face round
trip all start from it, so a BART generates token for token what transformers generates; a T5,
which says nothing, is unchanged. And longrope, whose switch to its long factors only a
decoder-only model's generation handles, is refused elsewhere (LMS135)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from hf_support import VOCAB, hf_model, save_tiny
from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.compiler.hf import arch_from_hf_config, load_hf_model, read_hf_config, spec_from_hf
from lmspec.compiler.hf.export import export_hf

BART = dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=48, max_position_embeddings=24,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
          pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
NEW = 8


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("start")
    return {"bart": save_tiny(root, "bart", T.BartForConditionalGeneration, T.BartConfig(**BART)),
            "t5": save_tiny(root, "t5", T.T5ForConditionalGeneration, T.T5Config(**T5))}


def prompts():
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0  # the second prompt is right-padded
    return ids, mask


def greedy_both(path):
    """lmspec's and transformers' greedy generations of NEW tokens (no eos: both run to the end)."""
    _, model = load_hf_model(path)
    ids, mask = prompts()
    ours = model.eval().generate(ids, attention_mask=mask, max_new_tokens=NEW, temperature=0)
    theirs = hf_model(path).generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                     eos_token_id=None, min_length=0, num_beams=1)
    return ours, theirs


# --- import and generate -------------------------------------------------------------------


def test_bart_imports_its_decoder_start_and_the_spec_writes_it(ckpts):
    arch = arch_from_hf_config(read_hf_config(ckpts["bart"]), "m")
    assert arch.pad_id == 1 and arch.decoder_start_id == 2
    text = spec_from_hf(ckpts["bart"], "bart")
    assert "  pad_id: 1\n" in text and "  decoder_start_id: 2\n" in text
    assert check_text(text, "bart.lmspec").models["bart"].decoder_start_id == 2


def test_bart_generates_what_transformers_generates_token_for_token(ckpts):
    ours, theirs = greedy_both(ckpts["bart"])
    assert ours[:, 0].tolist() == [2, 2]  # not the pad id, 1
    assert ours.tolist() == theirs.tolist()
    # starting from the pad id instead (the old behaviour) would generate something else
    _, model = load_hf_model(ckpts["bart"])
    ids, mask = prompts()
    from_pad = model.eval().generate(ids, attention_mask=mask, max_new_tokens=NEW, temperature=0, decoder_start_id=1)
    assert from_pad[:, 1:].tolist() != ours[:, 1:].tolist()


def test_a_t5_still_starts_from_its_pad_and_matches_transformers(ckpts):
    arch = arch_from_hf_config(read_hf_config(ckpts["t5"]), "m")
    assert arch.decoder_start_id is None  # decoder_start_token_id is the pad: nothing to say
    assert "decoder_start_id" not in spec_from_hf(ckpts["t5"], "t5")
    ours, theirs = greedy_both(ckpts["t5"])
    assert ours[:, 0].tolist() == [0, 0] and ours.tolist() == theirs.tolist()


# --- export --------------------------------------------------------------------------------


def test_the_export_round_trip_keeps_the_decoder_start(ckpts, tmp_path):
    arch, model = load_hf_model(ckpts["bart"])
    config, tensors = export_hf(arch, model.state_dict())
    assert config["decoder_start_token_id"] == 2 and config["pad_token_id"] == 1
    assert arch_from_hf_config(config, "m", tensor_names=tensors.keys()).decoder_start_id == 2
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert T.BartForConditionalGeneration.from_pretrained(tmp_path).generation_config.decoder_start_token_id == 2
    # a T5 exports its pad as the start, as before
    arch, model = load_hf_model(ckpts["t5"])
    assert export_hf(arch, model.state_dict())[0]["decoder_start_token_id"] == 0


def test_a_nonzero_final_logits_bias_says_what_to_do(ckpts, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from lmspec.compiler.hf import HFImportError

    path = tmp_path / "biased"
    shutil.copytree(ckpts["bart"], path)
    tensors = load_file(path / "model.safetensors")
    tensors["final_logits_bias"] = torch.full((1, VOCAB), 0.5)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFImportError, match=r"not all zero: .* to import the model without it, save final_logits_bias "
                                            r"as zeros \(each logit then loses its bias"):
        load_hf_model(path)


# --- the language --------------------------------------------------------------------------

ENC_DEC = ("model m {{ arch: encoder_decoder, vocab: 100, context: 32, d_model: 32, heads: 4, pad_id: 1,{extra} "
           "encoder {{ layers: 1 }}, decoder {{ layers: 1 }} }}")


def test_the_key_reaches_the_built_model_and_its_generate():
    r = check_text(ENC_DEC.format(extra=" decoder_start_id: 5,"), "m.lmspec")
    assert r.ok, [(d.code, d.message) for d in r.diagnostics]
    torch.manual_seed(0)
    model = build_model(r.models["m"]).eval()
    assert model.decoder_start_id == 5
    out = model.generate(torch.tensor([[7, 8, 9]]), max_new_tokens=2, temperature=0)
    assert out[0, 0] == 5
    assert model.generate(torch.tensor([[7, 8, 9]]), max_new_tokens=1, temperature=0, decoder_start_id=3)[0, 0] == 3


def test_decoder_start_id_outside_the_vocab_is_lms094():
    [d] = [d for d in check_text(ENC_DEC.format(extra=" decoder_start_id: 100,"), "m.lmspec").diagnostics
           if d.severity == "error"]
    assert d.code == "LMS094" and "decoder_start_id (100) is outside the vocabulary" in d.message
    assert d.span is not None and d.span.line == 1 and d.help == "use an id below 100, or a larger vocab"


def test_decoder_start_id_in_a_decoder_is_lms095():
    text = "model m { vocab: 100, context: 32, layers: 1, d_model: 32, heads: 4, decoder_start_id: 2 }"
    [d] = [d for d in check_text(text, "m.lmspec").diagnostics if d.severity == "error"]
    assert d.code == "LMS095" and "does not read 'decoder_start_id'" in d.message and "is a decoder" in d.message
    assert (d.span.line, d.span.col) == (1, text.index("decoder_start_id") + 1)
    assert d.help == "remove `decoder_start_id`, or use `arch: encoder_decoder`"


def test_training_and_sampling_start_the_decoder_where_generate_does(monkeypatch, tmp_path):
    """span_corruption's shifted targets begin with decoder_start_id; `lmspec sample` passes it on."""
    from lmspec.runtime import sample
    from lmspec.runtime.api import run
    from lmspec.runtime.progress import Progress
    from lmspec.runtime.stages import train

    spec = tmp_path / "t5.lmspec"
    spec.write_text("lmspec 1\ntokenizer tok { kind: bytes, sentinels: 8 }\n"
                    'data corpus { source: builtin("tiny-stories"), validation: 2% }\n'
                    "model t5 { arch: encoder_decoder, encoder { layers: 1 }, decoder { layers: 1 }, vocab: tok.vocab_size,"
                    " context: 32, d_model: 32, heads: 2, d_ff: 64, position: relative, norm: rmsnorm, bias: false,"
                    " decoder_start_id: 257 }\n"
                    "train t { model: t5, objective: span_corruption, data: corpus, steps: 1, batch: 2, seq_len: 32,"
                    " eval_batches: 1, eval_every: 1 }\n")
    seen = []
    real = train.build_objective

    def spy(objective, ctx):
        seen.append(ctx.decoder_start_id)
        return real(objective, ctx)

    monkeypatch.setattr(train, "build_objective", spy)
    r = run(spec, out=tmp_path / "run", progress=Progress(quiet=True), cache_dir=tmp_path / "cache")
    tok = r.tokenizer("t")
    assert seen and set(seen) == {257} and tok.pad_id != 257  # not the tokenizer's pad
    starts = []
    model = r.model("t")
    real_generate = model.generate

    def generate(*args, **kwargs):
        starts.append(kwargs.get("decoder_start_id"))
        return real_generate(*args, **kwargs)

    model.generate = generate
    sample.sample_texts(model, tok, ["Once"], max_tokens=2, seed=1)
    assert starts == [257]


# --- longrope outside a decoder-only model (LMS135) ----------------------------------------

LONGROPE = "position: rope(scaling: longrope(short_factor: [1, 1], long_factor: [1, 2], original_context: 16, factor: 2))"


def test_longrope_in_an_encoder_decoder_s_decoder_is_lms135():
    model = ENC_DEC.format(extra=f" {LONGROPE},").replace("context: 32", "context: 32, head_dim: 4")
    errors = [d for d in check_text(model, "m.lmspec").diagnostics if d.severity == "error"]
    assert [d.code for d in errors] == ["LMS135"], [(d.code, d.message) for d in errors]
    d = errors[0]
    assert "decoder-only models only" in d.message and "layer 0 of the decoder" in d.message
    assert d.span.line == 1 and d.span.col == model.index("longrope(") + 1
    assert "arch: decoder" in d.help


@pytest.mark.parametrize("arch", ["decoder", "encoder"])  # an encoder caches nothing: each forward chooses
def test_longrope_in_a_decoder_or_an_encoder_is_not_lms135(arch):
    text = (f"model m {{ arch: {arch}, vocab: 100, context: 32, layers: 1, d_model: 32, heads: 4, head_dim: 4, "
            f"{LONGROPE} }}")
    r = check_text(text, "m.lmspec")
    assert r.ok, [(d.code, d.message) for d in r.diagnostics]
