"""Falcon, BLOOM and MPT imported from Hugging Face: each a tiny random model saved by
transformers, in each layer shape its config flags select. The written spec checks with the
parameter count transformers reports and the logits agree within 1e-4 on a right-padded batch;
lmspec's ALiBi slopes are BLOOM's and MPT's for every head count; options lmspec cannot
reproduce are refused naming the field. Nothing is downloaded."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]

from transformers.models.bloom import modeling_bloom  # noqa: E402
from transformers.models.mpt import modeling_mpt  # noqa: E402

from lmspec.compiler.hf import HFImportError, arch_from_hf_config, load_hf_model, read_hf_config  # noqa: E402
from lmspec.compiler.modules.mlp import make_activation  # noqa: E402
from lmspec.compiler.modules.positions import alibi_slopes  # noqa: E402

transformers.logging.set_verbosity_error()

from hf_support import (  # noqa: E402, I001
    TOL, VOCAB, assert_generation_matches, assert_imports_exactly, assert_logits_match, ckpts_fixture, hf_model, outputs,
    save_tiny)

T = transformers

FALCON = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=64)
BLOOM = dict(vocab_size=VOCAB, hidden_size=32, n_head=4, n_layer=2)
MPT = dict(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, max_seq_len=64)

# name -> (model class, config): the model is built from the config with seed 0
FAMILIES = {
    # Falcon-7B: the old decoder, attention and MLP side by side behind one input_layernorm, one kv head
    "falcon_7b": (T.FalconForCausalLM, T.FalconConfig(**FALCON)),
    # Falcon-40B / 180B: the new decoder, ln_attn and ln_mlp, 2 kv heads of 2 queries each, fused group by group
    "falcon_40b": (T.FalconForCausalLM, T.FalconConfig(**FALCON, new_decoder_architecture=True, num_kv_heads=2)),
    # Falcon2-11B: the new decoder behind one norm, one kv head, its RoPE base
    "falcon2_11b": (T.FalconForCausalLM, T.FalconConfig(**FALCON, new_decoder_architecture=True, num_kv_heads=1,
                                                        num_ln_in_parallel_attn=1, rope_parameters={
                                                            "rope_type": "default", "rope_theta": 500_042.0})),
    # Falcon-RW's shape (sequential, multi-head, biases; here with RoPE: its ALiBi is refused), its own MLP width
    # [q k v] per head, and an untied head
    "falcon_rw_shape": (T.FalconForCausalLM, T.FalconConfig(**FALCON, parallel_attn=False, multi_query=False,
                                                            bias=True, ffn_hidden_size=48, tie_word_embeddings=False)),
    "falcon_bare": (T.FalconModel, T.FalconConfig(**FALCON, new_decoder_architecture=True, num_kv_heads=2)),
    # BLOOM: ALiBi, an embedding LayerNorm, [q k v] per head, bloom_gelu, tied
    "bloom": (T.BloomForCausalLM, T.BloomConfig(**BLOOM)),
    # 6 heads: ALiBi's slopes for a head count that is not a power of two
    "bloom_6_heads": (T.BloomForCausalLM, T.BloomConfig(**{**BLOOM, "hidden_size": 48, "n_head": 6})),
    "bloom_bare": (T.BloomModel, T.BloomConfig(**BLOOM)),
    # MPT: ALiBi, no biases anywhere (LayerNorms included), Wqkv [q | k | v], tied
    "mpt": (T.MptForCausalLM, T.MptConfig(**MPT)),
    "mpt_6_heads": (T.MptForCausalLM, T.MptConfig(**{**MPT, "d_model": 48, "n_heads": 6})),
    # softmax_scale 1: q.k unscaled
    "mpt_unscaled": (T.MptForCausalLM, T.MptConfig(**MPT, attn_config={"softmax_scale": 1.0})),
    "mpt_bare": (T.MptModel, T.MptConfig(**MPT)),
}


ckpts = ckpts_fixture(FAMILIES, "hf_falcon_bloom_mpt")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_imported_spec_checks_with_the_parameter_count_of_transformers(ckpts, name):
    assert_imports_exactly(ckpts[name])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers_with_padding(ckpts, name):
    assert_logits_match(ckpts[name])


@pytest.mark.parametrize("name", ["bloom_6_heads", "mpt_6_heads"])
def test_alibi_logits_match_with_left_padding(ckpts, name):
    """BLOOM numbers its keys from the attention mask's cumulative sum, MPT from the last slot,
    lmspec from position ids: under a causal mask all three biases differ by a constant per
    query, which softmax ignores, so the real tokens' logits agree however the batch is padded."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0  # the second row is left-padded
    _, model = load_hf_model(ckpts[name])
    with torch.no_grad():
        ours = outputs(model(ids, attention_mask=mask))
        theirs = outputs(hf_model(ckpts[name])(ids, attention_mask=mask))
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["falcon_40b", "bloom_6_heads", "mpt"])
def test_greedy_generation_matches_transformers_with_left_padding(ckpts, name):
    """The KV cache with grouped keys and values, and with ALiBi, token for token."""
    assert_generation_matches(ckpts[name])


# --- ALiBi slopes and bloom_gelu ------------------------------------------------------------


def test_lmspec_alibi_slopes_are_bloom_s_and_mpt_s_for_every_head_count():
    """The paper's slopes 2 ** (-8 h / n), and for n not a power of two those of the power below
    followed by every other slope of the power above: BLOOM computes them so, and MPT's
    alibi_bias_max 8 gives the same (the odd slopes of the power above, then the even ones)."""
    for heads in range(1, 129):
        ours = alibi_slopes(heads)
        bloom = modeling_bloom._get_alibi_slopes(heads, torch.device("cpu"))
        # MPT's bias for the key one slot before the last is -slope
        mpt = -modeling_mpt.build_mpt_alibi_tensor(heads, 2, alibi_bias_max=8)[:, 0, 0]
        torch.testing.assert_close(ours, bloom, rtol=1e-6, atol=0, msg=f"{heads} heads")
        torch.testing.assert_close(ours, mpt, rtol=1e-6, atol=0, msg=f"{heads} heads")


def test_bloom_gelu_is_gelu_tanh_forward_and_backward():
    """bloom_gelu writes sqrt(2/pi) as 0.79788456 and has its own backward: in float64 both are
    lmspec's gelu_tanh (PyTorch's tanh-approximated GELU) within 1e-9, far below float32's rounding."""
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    theirs = modeling_bloom.BloomGelu()(x)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    ours = make_activation("gelu_tanh")(x)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    torch.testing.assert_close(theirs, ours, atol=1e-9, rtol=0)
    torch.testing.assert_close(g_theirs, g_ours, atol=1e-9, rtol=0)


# --- what each variant reads -------------------------------------------------------------------


def test_falcon_variants_read_their_layer_shapes(ckpts):
    def layer(name):
        return arch_from_hf_config(read_hf_config(ckpts[name]), "f").decoder.layers[0]

    seven, forty, eleven, rw = (layer(n) for n in ("falcon_7b", "falcon_40b", "falcon2_11b", "falcon_rw_shape"))
    assert (seven.parallel, seven.shared_norm, seven.kv_heads, seven.bias) == (True, True, 1, False)
    assert (forty.parallel, forty.shared_norm, forty.kv_heads) == (True, False, 2)
    assert (eleven.shared_norm, eleven.kv_heads, eleven.position.theta) == (True, 1, 500_042.0)
    assert (rw.parallel, rw.kv_heads, rw.bias, rw.d_ff) == (False, 4, True, 48)
    assert not arch_from_hf_config(read_hf_config(ckpts["falcon_rw_shape"]), "f").tie_embeddings


def test_falcon_new_decoder_qkv_rows_are_regrouped_group_by_group(ckpts):
    """[q_0 q_1 k_0 v_0 | q_2 q_3 k_1 v_1] (2 queries per kv head) becomes [q_0..q_3 | k_0 k_1 | v_0 v_1]."""
    _, model = load_hf_model(ckpts["falcon_40b"])
    fused = hf_model(ckpts["falcon_40b"]).transformer.h[0].self_attention.query_key_value.weight
    groups = fused.detach().view(2, 4, 8, 32)  # (kv heads, 2 queries + k + v, head_dim, d)
    expected = torch.cat([groups[:, :2].reshape(-1, 32), groups[:, 2].reshape(-1, 32), groups[:, 3].reshape(-1, 32)])
    assert torch.equal(model.decoder.layers[0].attn.qkv_proj.weight, expected)


def test_bloom_reads_its_embedding_norm_alibi_and_tanh_gelu(ckpts):
    arch = arch_from_hf_config(read_hf_config(ckpts["bloom"]), "b")
    layer = arch.decoder.layers[0]
    assert arch.embed_norm and arch.tie_embeddings and arch.context == 2048
    assert (layer.position.kind, layer.activation, layer.bias, layer.d_ff) == ("alibi", "gelu_tanh", True, 128)
    assert arch_from_hf_config({**read_hf_config(ckpts["bloom"]), "seq_length": 4096}, "b").context == 4096


def test_bloom_files_without_the_transformer_prefix_load(ckpts, tmp_path):
    """bigscience's BloomForCausalLM uploads name their tensors as BloomModel does
    (word_embeddings.weight, h.0...), without lm_head.weight: transformers reads them, so does lmspec."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(ckpts["bloom"] / "model.safetensors")
    save_file({n.removeprefix("transformer."): t for n, t in tensors.items() if n != "lm_head.weight"},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((ckpts["bloom"] / "config.json").read_text())
    ids = torch.arange(12)[None] % VOCAB
    with torch.no_grad():
        ours, theirs = load_hf_model(tmp_path)[1](ids).logits, hf_model(ckpts["bloom"])(ids).logits
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


def test_bloom_pretraining_tp_without_slow_but_exact_changes_nothing(ckpts):
    config = read_hf_config(ckpts["bloom"])
    assert arch_from_hf_config({**config, "pretraining_tp": 4}, "b") == arch_from_hf_config(config, "b")


def test_mpt_has_no_bias_and_reads_softmax_scale(ckpts):
    arch = arch_from_hf_config(read_hf_config(ckpts["mpt"]), "m")
    layer = arch.decoder.layers[0]
    assert (layer.bias, layer.norm_bias, arch.norm_bias, layer.position.kind) == (False, False, False, "alibi")
    assert arch.context == 64 and arch.tie_embeddings
    assert arch_from_hf_config(read_hf_config(ckpts["mpt_unscaled"]), "m").decoder.layers[0].attention.scale == "none"
    config = read_hf_config(ckpts["mpt"])
    written = {**config, "attn_config": {**config["attn_config"], "softmax_scale": 8**-0.5}}  # the default, written
    assert arch_from_hf_config(written, "m") == arch


def test_mpt_with_any_softmax_scale_imports_exactly(tmp_path):
    """softmax_scale 0.3, neither 1/sqrt(head_dim) nor 1, is `attention_scale: 0.3`."""
    path = save_tiny(tmp_path, "mpt_0_3", T.MptForCausalLM, T.MptConfig(**MPT, attn_config={"softmax_scale": 0.3}))
    assert arch_from_hf_config(read_hf_config(path), "m").decoder.layers[0].attention.scale == 0.3
    assert_imports_exactly(path)
    assert_logits_match(path)


def test_mpt_unscaled_attention_changes_the_logits(ckpts):
    """softmax_scale 1 is read, not dropped: the same weights (both saved with seed 0) scaled as
    usual give other logits."""
    ids = torch.arange(12)[None] % VOCAB
    with torch.no_grad():
        scaled, unscaled = (load_hf_model(ckpts[name])[1](ids).logits for name in ("mpt", "mpt_unscaled"))
    assert not torch.allclose(scaled, unscaled, atol=1e-3)


# --- refusals ---------------------------------------------------------------------------------


def test_falcon_alibi_is_rounded_to_bfloat16_which_lmspec_s_is_not():
    """Why Falcon-RW is refused: its ALiBi tensor (before the division by sqrt(head_dim)) is the
    slopes times the key positions rounded to bfloat16, not the float32 products lmspec adds."""
    from transformers.models.falcon import modeling_falcon

    falcon = modeling_falcon.build_alibi_tensor(torch.ones(1, 64, dtype=torch.long), 12, torch.float32)
    exact = alibi_slopes(12)[:, None, None] * torch.arange(64.0)  # (heads, 1, keys)
    assert not torch.allclose(falcon, exact, rtol=1e-3, atol=0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"alibi": True}, r"falcon config.json sets alibi=True \(Falcon-RW\): Falcon rounds its ALiBi bias to bfloat16 "
                      r"and divides it by sqrt\(head_dim\)"),
    ({"new_decoder_architecture": True, "parallel_attn": False}, r"sets parallel_attn=False: transformers' new Falcon"),
    ({"new_decoder_architecture": True, "num_ln_in_parallel_attn": 3}, r"sets num_ln_in_parallel_attn=3"),
    ({"num_ln_in_parallel_attn": 2}, r"sets num_ln_in_parallel_attn=2: transformers' old Falcon decoder"),
    ({"multi_query": False, "num_kv_heads": 2}, r"sets num_kv_heads=2 with multi_query=False and "
                                                r"new_decoder_architecture=False"),
    ({"new_decoder_architecture": True, "num_kv_heads": 3}, r"num_kv_heads=3, which does not divide "
                                                            r"num_attention_heads=4"),
    ({"hidden_dropout": 0.1}, r"sets hidden_dropout=0.1, attention_dropout=0.0: lmspec has one dropout rate"),
    ({"activation": "quick_gelu"}, r"sets activation='quick_gelu', which has no lmspec activation"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
     r"rope_parameters.rope_type='dynamic'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     r"partial_rotary_factor=0.5: transformers' Falcon rotates every dimension of a head"),
])
def test_falcon_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, message):
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config({**read_hf_config(ckpts["falcon_7b"]), **changes}, "f")


@pytest.mark.parametrize(("changes", "message"), [
    ({"apply_residual_connection_post_layernorm": True},
     r"bloom config.json sets apply_residual_connection_post_layernorm=True: every residual then starts from the "
     r"normalised input"),
    ({"attention_dropout": 0.1}, r"sets hidden_dropout=0.0, attention_dropout=0.1: lmspec has one dropout rate"),
    ({"pretraining_tp": 2, "slow_but_exact": True}, r"sets slow_but_exact=True with pretraining_tp=2: transformers "
                                                    r"then drops the biases of the attention's dense"),
    ({"n_head": 5}, r"sets hidden_size, n_head = 32, 5: transformers splits the hidden size into equal heads"),
])
def test_bloom_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, message):
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config({**read_hf_config(ckpts["bloom"]), **changes}, "b")


@pytest.mark.parametrize(("changes", "attn", "message"), [
    ({"no_bias": False}, {}, r"sets no_bias=False: transformers' MptModel has no biases"),
    ({"expansion_ratio": 2}, {}, r"sets expansion_ratio=2: transformers' MptModel always builds an MLP of 4"),
    ({"logit_scale": 2.0}, {}, r"sets logit_scale=2.0: transformers' MptModel ignores it, and lmspec has no logit"),
    ({"logit_scale": "inv_sqrt_d_model"}, {}, r"sets logit_scale='inv_sqrt_d_model'"),
    ({"embedding_fraction": 0.1}, {}, r"sets embedding_fraction=0.1: it scales the embeddings' gradients"),
    ({"norm_type": "low_precision_rmsnorm"}, {}, r"sets norm_type='low_precision_rmsnorm'"),
    ({}, {"attn_type": "multiquery_attention"}, r"sets attn_config.attn_type='multiquery_attention'"),
    ({}, {"clip_qkv": 6.0}, r"sets attn_config.clip_qkv=6.0: lmspec does not clamp"),
    ({}, {"qk_ln": True}, r"sets attn_config.qk_ln=True: transformers' MptModel ignores it"),
    ({}, {"prefix_lm": True}, r"sets attn_config.prefix_lm=True"),
    ({}, {"attn_uses_sequence_id": True}, r"sets attn_config.attn_uses_sequence_id=True"),
    ({}, {"alibi": False}, r"sets attn_config.alibi=False: transformers' MptModel adds ALiBi whatever"),
    ({}, {"alibi_bias_max": 16}, r"sets attn_config.alibi_bias_max=16"),
    ({}, {"softmax_scale": 0.0}, r"sets attn_config.softmax_scale=0.0: lmspec's attention_scale multiplies q.k by a "
                                 r"positive number"),
    ({"resid_pdrop": 0.1}, {}, r"sets attn_config.attn_pdrop=0.0, resid_pdrop=0.1, emb_pdrop=0.0: lmspec has one "
                               r"dropout rate"),
])
def test_mpt_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, attn, message):
    config = read_hf_config(ckpts["mpt"])
    config = {**config, **changes, "attn_config": {**config.get("attn_config", {}), **attn}}
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config(config, "m")


def test_mpt_learned_positions_in_the_checkpoint_are_refused(ckpts):
    config = read_hf_config(ckpts["mpt"])
    with pytest.raises(HFImportError, match=r"mpt checkpoint holds learned positions \(wpe.weight\)"):
        arch_from_hf_config(config, "m", tensor_names=["transformer.wte.weight", "transformer.wpe.weight"])


def test_mpt_equal_dropouts_are_read(ckpts):
    config = read_hf_config(ckpts["mpt"])
    attn = {**config["attn_config"], "attn_pdrop": 0.1}
    config = {**config, "resid_pdrop": 0.1, "emb_pdrop": 0.1, "attn_config": attn}
    assert math.isclose(arch_from_hf_config(config, "m").dropout, 0.1)
