"""Export to Falcon, BLOOM and MPT: Falcon in each layer shape its flags select, BLOOM and MPT,
the two families that add ALiBi. Each tiny lmspec model (random weights moved off their init) is
written as config.json + safetensors; transformers' from_pretrained gives the same logits within
1e-4 on a right-padded batch, with no tensor missing or left over; the import reads the export
back as the same architecture and the same weights; an ALiBi decoder neither family computes is
refused naming what the closer of the two lacks. Nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]
from safetensors import safe_open  # noqa: E402

from lmspec.compiler.api import load_arch  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402
from lmspec.compiler.hf import HFExportError, export_family, export_hf, load_hf_model, spec_from_hf  # noqa: E402

transformers.logging.set_verbosity_error()

from hf_support import TOL, exported_fixture, hf_exported, inputs, outputs  # noqa: E402, I001

SPEC = """lmspec 1
model falcon_40b { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 96,
                   position: rope, norm: layernorm, activation: gelu, bias: false, residual: parallel(norms: 2) }
model falcon2 { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 96,
                position: rope(theta: 500_042), norm: layernorm, activation: gelu, bias: false, residual: parallel }
model falcon_7b { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 1, d_ff: 128,
                  position: rope, norm: layernorm, activation: gelu, bias: false, residual: parallel }
model falcon_7b_mha { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                      position: rope, norm: layernorm, activation: gelu_tanh, bias: true, residual: parallel,
                      tie_embeddings: false }
model falcon_rw { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 48,
                  position: rope(scaling: linear(factor: 2)), norm: layernorm, activation: relu, bias: false,
                  tie_embeddings: false }
model falcon_rw_multi_query { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 1,
                              d_ff: 64, position: rope, norm: layernorm, activation: gelu, bias: true }
model falcon_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 96,
                    position: rope, norm: layernorm, activation: gelu, bias: true, residual: parallel(norms: 2),
                    head: none }
model bloom { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128, position: alibi,
              norm: layernorm, activation: gelu_tanh, bias: true, embed_norm: true, tie_embeddings: true }
model bloom_6_heads { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 48, heads: 6, d_ff: 192,
                      position: alibi, norm: layernorm, norm_eps: 1e-6, activation: gelu_tanh, bias: true,
                      embed_norm: true, tie_embeddings: false }
model bloom_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                   position: alibi, norm: layernorm, activation: gelu_tanh, bias: true, embed_norm: true, head: none }
model mpt { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128, position: alibi,
            attention_scale: none, norm: layernorm, norm_bias: false, activation: gelu, bias: false,
            tie_embeddings: true }
model mpt_6_heads { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 48, heads: 6, d_ff: 192,
                    position: alibi, norm: layernorm, norm_bias: false, activation: gelu, bias: false,
                    tie_embeddings: true }
model mpt_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                 position: alibi, norm: layernorm, norm_bias: false, activation: gelu, bias: false, head: none }
"""

FAMILIES = {
    "falcon_40b": ("falcon", "FalconForCausalLM"), "falcon2": ("falcon", "FalconForCausalLM"),
    "falcon_7b": ("falcon", "FalconForCausalLM"), "falcon_7b_mha": ("falcon", "FalconForCausalLM"),
    "falcon_rw": ("falcon", "FalconForCausalLM"), "falcon_rw_multi_query": ("falcon", "FalconForCausalLM"),
    "falcon_bare": ("falcon", "FalconModel"),
    "bloom": ("bloom", "BloomForCausalLM"), "bloom_6_heads": ("bloom", "BloomForCausalLM"),
    "bloom_bare": ("bloom", "BloomModel"),
    "mpt": ("mpt", "MptForCausalLM"), "mpt_6_heads": ("mpt", "MptForCausalLM"), "mpt_bare": ("mpt", "MptModel"),
}


exported = exported_fixture(SPEC, FAMILIES, "export_alibi")


def _config(exported, name: str) -> dict:
    return json.loads((exported[name][2] / "config.json").read_text())


# --- same logits in transformers, and the import gives the model back --------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_model_exports_as_its_family(name):
    assert export_family(load_arch(SPEC, name)) == FAMILIES[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers_with_padding(exported, name):
    arch, model, path = exported[name]
    hf = hf_exported(path)
    ids, mask = inputs()
    with torch.no_grad():
        ours, theirs = outputs(model(ids, attention_mask=mask)), outputs(hf(ids, attention_mask=mask))
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_import_hf_of_the_export_gives_back_the_same_arch_and_weights(exported, name):
    arch, model, path = exported[name]
    assert load_arch(spec_from_hf(path, name), name) == arch
    back_arch, back = load_hf_model(path, name)
    assert back_arch == arch
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


# --- the layouts and flags written -------------------------------------------------------------


def test_falcon_writes_the_decoder_each_layer_shape_needs(exported):
    flags = ("new_decoder_architecture", "parallel_attn", "multi_query", "num_kv_heads", "num_ln_in_parallel_attn")
    shapes = {name: tuple(_config(exported, name)[f] for f in flags) for name in FAMILIES if name.startswith("falcon")}
    assert shapes == {
        "falcon_40b": (True, True, False, 2, 2),  # a LayerNorm per branch: the new decoder
        "falcon2": (True, True, False, 2, 1),  # one norm, grouped kv heads: the new decoder too
        "falcon_7b": (False, True, True, 1, 1),  # one norm, one kv head: the old decoder, as Falcon-7B
        "falcon_7b_mha": (False, True, False, 4, 1),
        "falcon_rw": (False, False, False, 4, None),  # sequential: the old decoder, Falcon-RW's shape
        "falcon_rw_multi_query": (False, False, True, 1, None),
        "falcon_bare": (True, True, False, 2, 2),
    }
    rw = _config(exported, "falcon_rw")
    assert (rw["alibi"], rw["ffn_hidden_size"], rw["activation"]) == (False, 48, "relu")
    assert rw["tie_word_embeddings"] is False
    assert rw["rope_parameters"] == {"rope_theta": 10_000.0, "rope_type": "linear", "factor": 2.0}
    assert _config(exported, "falcon2")["rope_parameters"]["rope_theta"] == 500_042.0


def test_falcon_fuses_q_k_v_group_by_group(exported):
    """lmspec's [q_0..q_3 | k_0 k_1 | v_0 v_1] becomes [q_0 q_1 k_0 v_0 | q_2 q_3 k_1 v_1]."""
    _, model, path = exported["falcon_40b"]
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        fused = f.get_tensor("transformer.h.1.self_attention.query_key_value.weight")
    q, k, v = model.decoder.layers[1].attn.qkv_proj.weight.split([32, 16, 16])
    groups = fused.view(2, 4, 8, 32)  # (kv heads, 2 queries + k + v, head_dim, d_model)
    assert torch.equal(groups[1, :2].reshape(-1, 32), q[16:])  # queries 2 and 3 share kv head 1
    assert torch.equal(groups[1, 2], k[8:]) and torch.equal(groups[1, 3], v[8:])


def test_bloom_and_mpt_write_their_fixed_fields(exported):
    bloom = _config(exported, "bloom_6_heads")
    assert (bloom["seq_length"], bloom["layer_norm_epsilon"], bloom["tie_word_embeddings"]) == (64, 1e-6, False)
    assert not bloom["apply_residual_connection_post_layernorm"] and not bloom["slow_but_exact"]
    with safe_open(str(exported["bloom"][2] / "model.safetensors"), "pt") as f:
        assert "transformer.word_embeddings_layernorm.bias" in f.keys() and "lm_head.weight" not in f.keys()
    mpt, scaled = _config(exported, "mpt"), _config(exported, "mpt_6_heads")
    assert (mpt["attn_config"]["softmax_scale"], scaled["attn_config"]["softmax_scale"]) == (1.0, None)
    assert (mpt["no_bias"], mpt["expansion_ratio"], mpt["max_seq_len"], mpt["attn_config"]["alibi_bias_max"]) == \
        (True, 4, 64, 8)


def test_the_families_tried_first_keep_their_models():
    """Falcon comes after the families exported before it: Falcon-RW's own shape (sequential,
    biases on every projection, one kv head per head) is a GPT-NeoX, and exports as one."""
    rw = SPEC.replace("kv_heads: 1,\n                              d_ff: 64", "d_ff: 64")
    assert export_family(load_arch(rw, "falcon_rw_multi_query")) == ("gpt_neox", "GPTNeoXForCausalLM")


# --- what the families lack --------------------------------------------------------------------

REFUSED = """lmspec 1
model alibi_rmsnorm { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                      position: alibi, norm: rmsnorm, activation: gelu, bias: false }
model alibi_gqa { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 128,
                  position: alibi, norm: layernorm, norm_bias: false, activation: gelu, bias: false }
model alibi_swiglu { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                     position: alibi, norm: layernorm, norm_bias: false, activation: swiglu, bias: false }
model alibi_parallel { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                       position: alibi, norm: layernorm, activation: gelu_tanh, bias: true, embed_norm: true,
                       residual: parallel }
model bloom_gelu { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                   position: alibi, norm: layernorm, activation: gelu, bias: true, embed_norm: true }
model bloom_no_embed_norm { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                            position: alibi, norm: layernorm, activation: gelu_tanh, bias: true }
model bloom_narrow { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 96,
                     position: alibi, norm: layernorm, activation: gelu_tanh, bias: true, embed_norm: true }
model mpt_dropout { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 128,
                    position: alibi, norm: layernorm, norm_bias: false, activation: gelu, bias: false, dropout: 0.1 }
model falcon_partial { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 1,
                       d_ff: 128, position: rope(fraction: 50%), norm: layernorm, activation: gelu, bias: false,
                       residual: parallel }
model falcon_rw_grouped { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2,
                          d_ff: 128, position: rope, norm: layernorm, activation: gelu, bias: false }
"""


@pytest.mark.parametrize(("name", "family", "gap"), [
    ("alibi_rmsnorm", "mpt", "norm: rmsnorm (mpt has layernorm)"),
    ("alibi_gqa", "mpt", "kv_heads: 2 (mpt has one kv head per head: kv_heads = heads)"),
    ("alibi_swiglu", "mpt", "activation: swiglu (mpt has gelu)"),
    ("alibi_parallel", "bloom", "residual: parallel (bloom has sequential: attention, then the MLP)"),
    ("bloom_gelu", "bloom", "activation: gelu (bloom has gelu_tanh (bloom_gelu))"),
    ("bloom_no_embed_norm", "bloom", "embed_norm: false (bloom has true)"),
    ("bloom_narrow", "bloom", "d_ff: 96 (bloom has 4 x d_model: its MLP's width is not a config field)"),
    ("mpt_dropout", "mpt", "dropout: 0.1 (mpt has 0.0: transformers 5 reads attn_config.attn_pdrop as a whole "
                           "number, and refuses a config with another rate)"),
    ("falcon_partial", "falcon", "rope: rope(theta: 10_000, fraction: 50%) (falcon has rope over every dimension "
                                 "of a head, in the half layout (partial rotary: gpt_neox or phi))"),
    ("falcon_rw_grouped", "falcon", "kv_heads: 2 (falcon has in a sequential layer one kv head (multi_query) or one "
                                    "per head; grouped kv heads are its new decoder's, which is parallel)"),
])
def test_what_no_family_expresses_is_refused_naming_the_feature(name, family, gap):
    arch = load_arch(REFUSED, name)
    with pytest.raises(HFExportError) as info:
        export_family(arch)
    err = info.value
    assert err.family == family and gap in err.gaps, (err.family, err.gaps)
    assert f"The closest is {family} (" in str(err) and gap in str(err)
    with pytest.raises(HFExportError):  # the whole export refuses too, before any tensor is written
        export_hf(arch, build_model(arch).state_dict())


def test_an_alibi_decoder_is_compared_with_the_alibi_families_only():
    """No other family adds ALiBi: the refusal names BLOOM and MPT, closest first, and no family
    whose first lack would be ALiBi itself."""
    with pytest.raises(HFExportError) as info:
        export_family(load_arch(REFUSED, "alibi_swiglu"))
    text = str(info.value)
    assert "The closest is mpt (MptForCausalLM), which lacks:\n  - activation: swiglu (mpt has gelu)" in text
    assert "position: alibi" not in text
    assert all(f"{family} (" not in text for family in ("llama", "gpt2", "gpt_neox", "falcon"))
