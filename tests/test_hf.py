"""Hugging Face interoperability: tiny random checkpoints written by transformers itself
(`save_pretrained(..., safe_serialization=True)`), loaded by lmspec, must give the same
logits. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]
from safetensors.torch import load_file, save_file  # noqa: E402

from lmspec.compiler.api import check_text, load_arch  # noqa: E402
from lmspec.compiler.arch import ArchConfig  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402
from lmspec.compiler.hf import (  # noqa: E402
    HFImportError,
    HFWeightsError,
    arch_from_hf_config,
    import_hf_main,
    load_hf_model,
    load_hf_weights,
    read_hf_config,
    spec_from_hf,
)

transformers.logging.set_verbosity_error()

VOCAB = 100
TOL = 1e-4


def _save(root: Path, name: str, model) -> Path:
    path = root / name
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint per supported family, saved by transformers."""
    root = tmp_path_factory.mktemp("hf")
    T = transformers
    torch.manual_seed(0)
    bert = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    t5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    llama = dict(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    models = {
        "gpt2": T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
        "bert_pretraining": T.BertForPreTraining(T.BertConfig(**bert)),
        "bert_model": T.BertModel(T.BertConfig(**bert)),
        # T5 v1.0: relu, tied head scaled by d_model**-0.5
        "t5": T.T5ForConditionalGeneration(T.T5Config(**t5, feed_forward_proj="relu", tie_word_embeddings=True)),
        # v1.1-like: gated feed-forward (wi_0, wi_1), no head scaling
        "t5_gated": T.T5ForConditionalGeneration(
            T.T5Config(**t5, feed_forward_proj="gated-silu", tie_word_embeddings=False)
        ),
        # T5 v1.1 / Flan-T5: gated tanh-approximated GELU (gelu_new)
        "t5_v1_1": T.T5ForConditionalGeneration(
            T.T5Config(**t5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        ),
        "llama": T.LlamaForCausalLM(T.LlamaConfig(**llama, rope_theta=500_000.0)),  # GQA: 6 heads, 2 kv heads
        "mistral": T.MistralForCausalLM(T.MistralConfig(**llama, sliding_window=5)),
    }
    return {name: _save(root, name, model) for name, model in models.items()}


def _hf(path: Path):
    cls = getattr(transformers, read_hf_config(path)["architectures"][0])
    return cls.from_pretrained(path).eval()


def _inputs(T: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 4 :] = 0  # the second row is right-padded
    return ids, mask


# --- same logits as transformers ---------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_decoder_logits_match_transformers(ckpts, family):
    ids, mask = _inputs()
    arch, model = load_hf_model(ckpts[family])
    hf = _hf(ckpts[family])
    assert not model.training  # eval mode, as from_pretrained leaves a model
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=TOL, rtol=0)
        real = mask.bool()
        ours, theirs = model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
        torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)


def test_llama_is_grouped_query_and_mistral_slides(ckpts):
    llama = load_hf_model(ckpts["llama"])[0].decoder.layers[0]
    assert (llama.heads, llama.kv_heads, llama.head_dim) == (6, 2, 8)
    assert (llama.position.kind, llama.position.theta) == ("rope", 500_000.0)
    mistral = load_hf_model(ckpts["mistral"])[0].decoder.layers[0]
    assert (mistral.attention.kind, mistral.attention.window) == ("sliding", 5)


def test_mistral_window_changes_the_logits(ckpts):
    """The window is shorter than the input, so the comparison above really tests it."""
    ids, _ = _inputs()
    _, model = load_hf_model(ckpts["mistral"])
    for layer in model.decoder.layers:
        layer.attn.kind = "causal"
    with torch.no_grad():
        assert (model(ids).logits - _hf(ckpts["mistral"])(ids).logits).abs().max() > 1e-3


def test_a_mistral_window_longer_than_the_context_imports_as_causal(tmp_path):
    """Mistral-7B's config says sliding_window 4096; a copy cut to a short context must still
    import to a spec that its own check accepts (a window over the whole context slides over
    nothing: LMS063 rejects it), with identical logits."""
    cfg = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                     sliding_window=4096)
    torch.manual_seed(0)
    path = _save(tmp_path, "mistral_long_window", transformers.MistralForCausalLM(cfg))
    report = check_text(spec_from_hf(path, "m"))
    assert report.ok, [d.message for d in report.diagnostics]
    assert report.models["m"].decoder.layers[0].attention.kind == "causal"
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    _, model = load_hf_model(path)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _hf(path)(ids).logits, atol=TOL, rtol=0)


def test_bert_pretraining_mlm_and_nsp_logits_match(ckpts):
    ids, mask = _inputs()
    segments = torch.zeros_like(ids)
    segments[:, 6:] = 1
    arch, model = load_hf_model(ckpts["bert_pretraining"])
    assert [h.kind for h in arch.heads] == ["mlm", "nsp"] and arch.pooler and arch.segments == 2
    hf = _hf(ckpts["bert_pretraining"])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, segment_ids=segments)
        theirs = hf(ids, attention_mask=mask, token_type_ids=segments)
    real = mask.bool()
    torch.testing.assert_close(ours.logits[real], theirs.prediction_logits[real], atol=TOL, rtol=0)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=TOL, rtol=0)
    assert model.mlm_head.decoder.weight is model.embed.weight  # tied, loaded once


def test_bert_model_hidden_states_and_pooler_match(ckpts):
    ids, mask = _inputs()
    arch, model = load_hf_model(ckpts["bert_model"])
    assert arch.heads == () and arch.pooler
    hf = _hf(ckpts["bert_model"])
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), hf(ids, attention_mask=mask)
        real = mask.bool()
        torch.testing.assert_close(ours.hidden[real], theirs.last_hidden_state[real], atol=TOL, rtol=0)
        torch.testing.assert_close(model.pooler(ours.hidden), theirs.pooler_output, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["t5", "t5_gated", "t5_v1_1"])
def test_t5_logits_match_transformers(ckpts, family):
    ids, mask = _inputs()
    decoder_ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    arch, model = load_hf_model(ckpts[family])
    hf = _hf(ckpts[family])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


def test_t5_v1_0_scales_its_tied_head_and_v1_1_does_not(ckpts):
    v10 = load_hf_model(ckpts["t5"])[0]
    assert v10.tie_embeddings and v10.tied_head_scale == pytest.approx(32**-0.5)
    assert v10.encoder.layers[0].attention.scale == "none"
    assert v10.encoder.layers[0].activation == "relu"
    v11 = load_hf_model(ckpts["t5_gated"])[0]
    assert v11.tied_head_scale == 1.0 and v11.encoder.layers[0].activation == "swiglu"


def test_t5_with_its_own_lm_head_loads_it(ckpts, tmp_path):
    """Checkpoints written before transformers 5 (T5 v1.1, Flan-T5) keep a separate lm_head."""
    path = _copy(ckpts["t5_gated"], tmp_path / "t5_untied")
    tensors = load_file(path / "model.safetensors")
    tensors["lm_head.weight"] = torch.randn(VOCAB, 32)
    save_file(tensors, path / "model.safetensors")
    _edit_config(path, tie_word_embeddings=False, scale_decoder_outputs=None)
    arch, model = load_hf_model(path)
    assert not arch.tie_embeddings and arch.tied_head_scale == 1.0
    assert model.lm_head.weight is not model.embed.weight
    torch.testing.assert_close(model.lm_head.weight, tensors["lm_head.weight"])
    torch.testing.assert_close(model.embed.weight, tensors["shared.weight"])


# --- file layouts ------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))


def test_sharded_checkpoint_loads(ckpts, tmp_path):
    path = tmp_path / "sharded"
    _hf(ckpts["llama"]).save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file() and not (path / "model.safetensors").exists()
    ids, _ = _inputs()
    _, sharded = load_hf_model(path)
    _, single = load_hf_model(ckpts["llama"])
    with torch.no_grad():
        torch.testing.assert_close(sharded(ids).logits, single(ids).logits, atol=0, rtol=0)


def test_a_missing_shard_is_named_before_anything_loads(ckpts, tmp_path):
    path = tmp_path / "sharded"
    _hf(ckpts["llama"]).save_pretrained(path, safe_serialization=True, max_shard_size="20KB")
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(HFImportError, match=rf"lists shards that are not in {path}: {shards[1].name}"):
        load_hf_model(path)


def test_weights_that_are_not_floating_point_are_refused_naming_the_tensor(ckpts, tmp_path):
    """A quantised checkpoint's int8 weights would be copied as other numbers: refused, every
    such tensor named, nothing copied."""
    path = tmp_path / "int8"
    shutil.copytree(ckpts["gpt2"], path)
    tensors = load_file(path / "model.safetensors")
    name = next(n for n in tensors if n.endswith("attn.c_attn.weight"))
    tensors[name] = tensors[name].to(torch.int8)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = build_model(arch_from_hf_config(read_hf_config(path), "gpt2"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HFWeightsError) as info:
        load_hf_weights(model, path)
    assert info.value.wrong_dtype == [(name, "I8")] and not info.value.missing and not info.value.mismatched
    assert f"{name}: I8" in str(info.value) and "import the unquantised" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_legacy_names_gpt2_without_prefix_and_bert_gamma_beta(ckpts, tmp_path):
    """OpenAI's GPT-2 upload has no "transformer." prefix and stores the causal-mask buffers;
    Google's BERT conversions name LayerNorm parameters gamma/beta."""
    gpt2 = _copy(ckpts["gpt2"], tmp_path / "gpt2_legacy")
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(gpt2 / "model.safetensors").items()}
    tensors["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()  # a tied copy is accepted
    save_file(tensors, gpt2 / "model.safetensors")
    ids, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(gpt2)[1](ids).logits, _hf(ckpts["gpt2"])(ids).logits, atol=TOL, rtol=0)

    bert = _copy(ckpts["bert_pretraining"], tmp_path / "bert_legacy")
    tensors = load_file(bert / "model.safetensors")
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in tensors.items()
    }
    assert renamed.keys() != tensors.keys()
    save_file(renamed, bert / "model.safetensors")
    _, model = load_hf_model(bert)
    torch.testing.assert_close(model.embed_norm.weight, tensors["bert.embeddings.LayerNorm.weight"])


def test_load_into_a_model_built_from_the_arch(ckpts):
    arch = arch_from_hf_config(read_hf_config(ckpts["gpt2"]), "gpt2")
    model = build_model(arch, dtype=torch.float64)
    load_hf_weights(model, ckpts["gpt2"])
    file = load_file(ckpts["gpt2"] / "model.safetensors")
    # Conv1D stores (in, out): transposed into nn.Linear's (out, in)
    torch.testing.assert_close(
        model.decoder.layers[1].attn.qkv_proj.weight, file["transformer.h.1.attn.c_attn.weight"].t().double()
    )
    assert model.lm_head.weight is model.embed.weight


def test_new_heads_keep_their_init_and_the_body_loads(ckpts):
    """`gpt with head scalar, init: hf(...)`: a reward model started from a causal LM."""
    import dataclasses

    from lmspec.compiler.arch import HeadConfig

    arch = arch_from_hf_config(read_hf_config(ckpts["llama"]), "reward")
    arch = dataclasses.replace(arch, heads=(HeadConfig("scalar"),))
    model = build_model(arch)
    with pytest.raises(HFWeightsError) as info:
        load_hf_weights(model, ckpts["llama"])
    assert [m.split()[0] for m in info.value.missing] == ["score.weight", "score.bias"]
    assert info.value.unexpected == ["lm_head.weight"]

    score = model.score.weight.clone()
    load_hf_weights(model, ckpts["llama"], new_heads=True)
    assert torch.equal(model.score.weight, score)
    ids, _ = _inputs()
    with torch.no_grad():
        ours = model.eval()(ids)
        theirs = _hf(ckpts["llama"]).model(ids).last_hidden_state
    torch.testing.assert_close(ours.hidden, theirs, atol=TOL, rtol=0)
    assert ours.scores.shape == (2,)


def test_a_meta_model_cannot_be_filled(ckpts):
    model = build_model(arch_from_hf_config(read_hf_config(ckpts["gpt2"]), "gpt2"), device="meta")
    with pytest.raises(ValueError, match="meta device"):
        load_hf_weights(model, ckpts["gpt2"])


def test_load_in_bfloat16(ckpts):
    _, model = load_hf_model(ckpts["llama"], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids, _ = _inputs()
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


# --- errors ------------------------------------------------------------------------------


def test_mismatched_tensors_are_all_named(ckpts, tmp_path):
    path = _copy(ckpts["llama"], tmp_path / "broken")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(48, 90)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(HFWeightsError) as info:
        load_hf_model(path)
    err = info.value
    assert err.missing == ["decoder.layers.1.attn.qkv_proj.weight (from model.layers.1.self_attn.k_proj.weight)"]
    assert err.unexpected == ["model.layers.0.mlp.extra.weight"]  # q and v of layer 1 are not "unexpected"
    assert err.mismatched == [
        ("decoder.layers.0.mlp.down_proj.weight", (48, 96), (48, 90), ("model.layers.0.mlp.down_proj.weight",))
    ]
    text = str(err)
    assert "missing (1)" in text and "unexpected (1)" in text
    assert "decoder.layers.0.mlp.down_proj.weight: expected (48, 96), found (48, 90)" in text


def test_nothing_is_copied_when_the_check_fails(ckpts, tmp_path):
    path = _copy(ckpts["gpt2"], tmp_path / "gpt2_extra")
    tensors = load_file(path / "model.safetensors")
    tensors["transformer.h.2.ln_1.weight"] = torch.ones(32)  # a third layer the config does not have
    save_file(tensors, path / "model.safetensors")
    model = build_model(arch_from_hf_config(read_hf_config(path), "gpt2"))
    before = model.embed.weight.clone()
    with pytest.raises(HFWeightsError, match=r"transformer\.h\.2\.ln_1\.weight"):
        load_hf_weights(model, path)
    assert torch.equal(model.embed.weight, before)


def test_pickle_only_checkpoint_is_refused(ckpts, tmp_path):
    path = tmp_path / "pickled"
    path.mkdir()
    shutil.copy(ckpts["gpt2"] / "config.json", path / "config.json")
    (path / "pytorch_model.bin").write_bytes(b"not even a pickle: lmspec must never open it")
    with pytest.raises(HFImportError, match=r"pytorch_model\.bin.*Convert the checkpoint to safetensors"):
        load_hf_model(path)
    # the architecture alone is still describable
    assert "model pickled {" in spec_from_hf(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "mamba"}, r"model_type 'mamba' is not supported.*gpt2, bert, t5, llama, mistral"),
        ({"architectures": ["LlamaForSequenceClassification"]}, r"LlamaForSequenceClassification"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}},
         r"rope_parameters.rope_type='dynamic': transformers' dynamic NTK scaling recomputes theta from the longest "
         r"sequence its rotary module has seen so far"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu'"),
    ],
)
def test_unsupported_configs_raise_a_clear_error(ckpts, changes, message):
    config = {**read_hf_config(ckpts["llama"]), **changes}
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config(config, "m")


def test_t5_v1_1_gated_gelu_is_the_tanh_approximation(ckpts):
    arch = arch_from_hf_config(read_hf_config(ckpts["t5_v1_1"]), "t5")
    assert {layer.activation for stack in arch.stacks for layer in stack.layers} == {"geglu_tanh"}


def test_an_unknown_t5_feed_forward_is_refused(ckpts):
    config = {**read_hf_config(ckpts["t5"]), "feed_forward_proj": "gated-swish"}
    with pytest.raises(HFImportError, match=r"gated-swish.*no lmspec activation matches it"):
        arch_from_hf_config(config, "t5")


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(HFImportError, match="no such directory"):
        read_hf_config(tmp_path / "nope")
    with pytest.raises(HFImportError, match="no config.json"):
        read_hf_config(tmp_path)


# --- spec text and the import-hf command -------------------------------------------------


def test_spec_from_hf_sets_every_key(ckpts):
    text = spec_from_hf(ckpts["mistral"], "mistral_tiny")
    assert text.startswith("lmspec 1\n")
    assert "# Imported by `lmspec import-hf` from" in text and "MistralForCausalLM" in text
    lines = {line.strip() for line in text.splitlines()}
    for line in [
        "model mistral_tiny {", "arch: decoder", "vocab: 100", "context: 64", "layers: 2", "d_model: 48",
        "heads: 6", "kv_heads: 2", "head_dim: 8", "d_ff: 96", "attention: sliding(window: 5)",
        "attention_scale: inverse_sqrt", "position: rope(theta: 10_000)", "norm: rmsnorm", "norm_eps: 1e-6",
        "placement: pre", "activation: swiglu", "bias: false", "dropout: 0.0", "tie_embeddings: false",
        "segments: 0", "pooler: false", "embed_norm: false", "embed_scale: 1.0", "head_scale: 1.0",
        "final_norm: true", "head: lm",
    ]:
        assert line in lines, line
    t5 = spec_from_hf(ckpts["t5"])
    assert "model t5 {" in t5 and "head_scale: 0.1767766952966369" in t5
    assert "encoder { layers: 2, attention: bidirectional }" in t5
    assert "decoder { layers: 2, attention: causal }" in t5
    assert "head: [mlm(transform: true), nsp]" in spec_from_hf(ckpts["bert_pretraining"])
    assert "head: none" in spec_from_hf(ckpts["bert_model"])


@pytest.mark.parametrize("family", ["gpt2", "bert_pretraining", "bert_model", "t5", "t5_gated", "t5_v1_1", "llama",
                                    "mistral"])
def test_spec_round_trips_to_the_same_arch(ckpts, family):
    path = ckpts[family]
    expected = arch_from_hf_config(read_hf_config(path), family, tensor_names=load_file(path / "model.safetensors"))
    parsed = load_arch(spec_from_hf(path, family), family)
    assert isinstance(parsed, ArchConfig)
    assert parsed == expected


HETEROGENEOUS = """lmspec 1
model g {
  arch: decoder, vocab: 300, context: 128, layers: 5, d_model: 64, heads: 4, kv_heads: 2
  position: rope(theta: 1M), norm: rmsnorm, activation: swiglu, bias: false
  layer 0..1 { attention: sliding(window: 64) }
  layer 3 { d_ff: 512 }
}
model s {
  arch: encoder_decoder, vocab: 300, context: 128, d_model: 64, heads: 4, norm: rmsnorm
  position: relative(buckets: 16, max_distance: 64), attention_scale: none, tie_embeddings: true, head_scale: 0.125
  encoder { layers: 2 }
  decoder { layers: 3, d_ff: 128, layer 2 { dropout: 0.5 } }
}
"""


@pytest.mark.parametrize("name", ["g", "s"])
def test_spec_from_arch_round_trips_per_layer_overrides(name):
    from lmspec.compiler.hf import spec_from_arch

    arch = load_arch(HETEROGENEOUS, name)
    text = spec_from_arch(arch, comment="round trip")
    assert load_arch(text, name) == arch
    if name == "g":  # the model-level value is the common one; overrides name the exceptions
        assert "  attention: causal\n" in text and "layer 0..1 { attention: sliding(window: 64) }" in text
        assert "layer 3 { d_ff: 512 }" in text and "theta: 1_000_000" in text
    else:
        assert "decoder {\n    layers: 3\n    attention: causal\n    d_ff: 128\n    layer 2 { dropout: 0.5 }" in text


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda L, i: dataclasses.replace(L, norm_eps=1e-5 if i else 1e-6), "layers differ in norm_eps"),
        (lambda L, i: dataclasses.replace(L, placement="post" if i else "pre"), "layers differ in placement"),
        (
            lambda L, i: dataclasses.replace(
                L, attention=dataclasses.replace(L.attention, scale="none" if i else "inverse_sqrt")
            ),
            "layers differ in attention scale",
        ),
    ],
)
def test_spec_from_arch_refuses_what_lmspec_cannot_express(change, message):
    from lmspec.compiler.hf import spec_from_arch

    arch = load_arch(HETEROGENEOUS, "g")
    layers = tuple(change(L, i) for i, L in enumerate(arch.decoder.layers))
    with pytest.raises(ValueError, match=message):
        spec_from_arch(dataclasses.replace(arch, decoder=dataclasses.replace(arch.decoder, layers=layers)))


def test_import_hf_command(ckpts, tmp_path, capsys):
    assert import_hf_main([str(ckpts["gpt2"]), "--name", "small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lmspec 1\n") and "model small {" in out and "activation: gelu_tanh" in out

    target = tmp_path / "out.lmspec"
    assert import_hf_main([str(ckpts["llama"]), "-o", str(target)]) == 0
    assert "model llama {" in target.read_text() and capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_dir", "no such directory"),
        ("missing_config", "no config.json"),
        ("unsupported", "model_type 'mamba' is not supported"),
        ("bad_name", "is not an identifier"),
    ],
)
def test_import_hf_command_errors_exit_2(ckpts, tmp_path, capsys, setup, message):
    path = tmp_path / "ckpt"
    args = [str(path)]
    if setup != "missing_dir":
        path.mkdir()
    if setup == "unsupported":
        (path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    if setup == "bad_name":
        args = [str(ckpts["gpt2"]), "--name", "not-a-name"]
    assert import_hf_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmspec import-hf: error:") and message in err
