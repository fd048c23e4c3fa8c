"""Export to the families the import already reads: GPT-NeoX, GPT-J, Phi, Phi-3, Mixtral, OPT,
RoBERTa, DistilBERT and mT5. Each tiny lmspec model (random weights moved off their init) is
written as config.json + safetensors; transformers' from_pretrained gives the same logits within
1e-4 on a right-padded batch, with no tensor missing or left over; the import reads the export
back as the same architecture and the same weights; what a family lacks is named. Nothing is
downloaded."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from lmspec.compiler.api import load_arch  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402
from lmspec.compiler.hf import HFExportError, export_family, export_hf, load_hf_model, spec_from_hf  # noqa: E402

transformers.logging.set_verbosity_error()

from hf_support import TOL, exported_fixture, hf_exported, inputs, outputs  # noqa: E402, I001

SPEC = """lmspec 1
model gpt_neox { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 96,
                 position: rope(fraction: 25%), norm: layernorm, activation: gelu, bias: true,
                 residual: parallel(norms: 2) }
model gpt_neox_sequential { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 96,
                            position: rope(theta: 20_000, fraction: 50%, scaling: linear(factor: 2)),
                            norm: layernorm, activation: gelu_tanh, bias: false, mlp_bias: true, tie_embeddings: true }
model gpt_neox_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 96,
                      position: rope(fraction: 25%), norm: layernorm, activation: gelu, bias: true,
                      residual: parallel(norms: 2), head: none }
model gptj { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 128,
             position: rope(fraction: 50%, layout: interleaved), norm: layernorm, activation: gelu_tanh,
             bias: false, mlp_bias: true, residual: parallel, head: lm(bias: true) }
model phi { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4, kv_heads: 2, d_ff: 128,
            position: rope(fraction: 25%), norm: layernorm, activation: gelu_tanh, bias: true, qk_norm: true,
            residual: parallel, head: lm(bias: true) }
model phi_bare { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 128,
                 position: rope(fraction: 50%), norm: layernorm, activation: gelu, bias: true, residual: parallel,
                 head: none }
model phi3 { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 64,
             attention: sliding(window: 5), position: rope(fraction: 50%), norm: rmsnorm, activation: swiglu,
             bias: false }
model phi3_geglu { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                   position: rope, norm: rmsnorm, activation: geglu_tanh, bias: false, tie_embeddings: true }
model mixtral { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 48,
                position: rope, norm: rmsnorm, activation: swiglu, bias: false,
                mlp: moe(experts: 4, top_k: 2, aux_loss: 0.02) }
model mixtral_sliding { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2,
                        d_ff: 48, attention: sliding(window: 5), position: rope, norm: rmsnorm, activation: swiglu,
                        bias: false, mlp: moe(experts: 4, top_k: 1, router_jitter: 0.1, aux_loss: 0) }
model opt { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64, position: learned,
            position_offset: 2, norm: layernorm, activation: relu, bias: true, tie_embeddings: true }
model opt_post_norm { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                      position: learned, position_offset: 2, norm: layernorm, placement: post, final_norm: false,
                      activation: gelu, bias: false }
model roberta { arch: encoder, vocab: 101, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64, pad_id: 100,
                position_offset: 101, norm: layernorm, placement: post, activation: gelu, segments: 1,
                embed_norm: true, final_norm: false, tie_embeddings: true, head: mlm(transform: true) }
model roberta_bare { arch: encoder, vocab: 101, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64, pad_id: 100,
                     position_offset: 101, norm: layernorm, placement: post, activation: relu, segments: 2,
                     pooler: true, embed_norm: true, final_norm: false, head: none }
model distilbert { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                   norm: layernorm, norm_eps: 1e-12, placement: post, activation: gelu, embed_norm: true,
                   final_norm: false, tie_embeddings: true, head: mlm(transform: true) }
model distilbert_untied { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                          norm: layernorm, norm_eps: 1e-12, placement: post, activation: relu, embed_norm: true,
                          final_norm: false, tie_embeddings: false, head: mlm(transform: true) }
model distilbert_bare { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                        norm: layernorm, norm_eps: 1e-12, placement: post, activation: gelu, embed_norm: true,
                        final_norm: false, head: none }
model mt5 { arch: encoder_decoder, vocab: 100, context: 64, d_model: 32, heads: 4, head_dim: 8, d_ff: 64,
            attention_scale: none, position: relative(buckets: 16, max_distance: 64), norm: rmsnorm,
            activation: geglu_tanh, bias: false, tie_embeddings: false, pad_id: 0,
            encoder { layers: 2, attention: bidirectional }, decoder { layers: 3, attention: causal } }
"""

FAMILIES = {
    "gpt_neox": ("gpt_neox", "GPTNeoXForCausalLM"), "gpt_neox_sequential": ("gpt_neox", "GPTNeoXForCausalLM"),
    "gpt_neox_bare": ("gpt_neox", "GPTNeoXModel"), "gptj": ("gptj", "GPTJForCausalLM"),
    "phi": ("phi", "PhiForCausalLM"), "phi_bare": ("phi", "PhiModel"),
    "phi3": ("phi3", "Phi3ForCausalLM"), "phi3_geglu": ("phi3", "Phi3ForCausalLM"),
    "mixtral": ("mixtral", "MixtralForCausalLM"), "mixtral_sliding": ("mixtral", "MixtralForCausalLM"),
    "opt": ("opt", "OPTForCausalLM"), "opt_post_norm": ("opt", "OPTForCausalLM"),
    "roberta": ("roberta", "RobertaForMaskedLM"), "roberta_bare": ("roberta", "RobertaModel"),
    "distilbert": ("distilbert", "DistilBertForMaskedLM"), "distilbert_untied": ("distilbert", "DistilBertForMaskedLM"),
    "distilbert_bare": ("distilbert", "DistilBertModel"),
    "mt5": ("mt5", "MT5ForConditionalGeneration"),
}


exported = exported_fixture(SPEC, FAMILIES, "export_families")


def _config(exported, name: str) -> dict:
    return json.loads((exported[name][2] / "config.json").read_text())


def _tensor(exported, name: str, tensor: str) -> torch.Tensor:
    with safe_open(str(exported[name][2] / "model.safetensors"), "pt") as f:
        return f.get_tensor(tensor)


# --- same logits in transformers, and the import gives the model back --------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_model_exports_as_its_family(name):
    assert export_family(load_arch(SPEC, name)) == FAMILIES[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers_with_padding(exported, name):
    arch, model, path = exported[name]
    hf = hf_exported(path)
    ids, mask = inputs()
    # an encoder-decoder reads the padded batch in its encoder and 7 other tokens in its decoder
    extra = {"decoder_input_ids": torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(2))
             } if arch.arch == "encoder_decoder" else {}
    real = mask.bool() if not extra else torch.ones(2, 7, dtype=torch.bool)  # decoder rows are all real
    with torch.no_grad():
        ours, theirs = outputs(model(ids, attention_mask=mask, **extra)), outputs(hf(ids, attention_mask=mask, **extra))
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)


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


# --- the layouts written back ---------------------------------------------------------------------


def test_gpt_neox_writes_q_k_v_head_by_head(exported):
    _, model, _ = exported["gpt_neox"]
    fused = _tensor(exported, "gpt_neox", "gpt_neox.layers.1.attention.query_key_value.weight")
    q, k, v = model.decoder.layers[1].attn.qkv_proj.weight.split(64)
    heads = fused.reshape(4, 3, 16, 64)  # [q_h k_h v_h] for each head h
    for part, rows in enumerate((q, k, v)):
        assert torch.equal(heads[2, part], rows[32:48])  # head 2's rows of each
    config = _config(exported, "gpt_neox")
    assert config["use_parallel_residual"] and config["rope_parameters"]["partial_rotary_factor"] == 0.25
    sequential = _config(exported, "gpt_neox_sequential")
    assert not sequential["use_parallel_residual"] and not sequential["attention_bias"]
    assert sequential["rope_parameters"] == {"rope_theta": 20_000.0, "rope_type": "linear", "factor": 2.0,
                                             "partial_rotary_factor": 0.5}


def test_phi3_fuses_gate_and_up_again(exported):
    _, model, _ = exported["phi3"]
    mlp = model.decoder.layers[0].mlp
    fused = _tensor(exported, "phi3", "model.layers.0.mlp.gate_up_proj.weight")
    assert torch.equal(fused, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
    config = _config(exported, "phi3")
    assert (config["sliding_window"], config["rope_parameters"]["partial_rotary_factor"]) == (5, 0.5)
    assert _config(exported, "phi3_geglu")["hidden_act"] == "gelu_new"  # up * gelu_tanh(gate)


def test_mixtral_writes_its_experts_and_router(exported):
    _, model, _ = exported["mixtral"]
    moe = model.decoder.layers[1].mlp
    assert torch.equal(_tensor(exported, "mixtral", "model.layers.1.block_sparse_moe.gate.weight"), moe.router.weight)
    assert torch.equal(_tensor(exported, "mixtral", "model.layers.1.block_sparse_moe.experts.3.w3.weight"),
                       moe.experts[3].up_proj.weight)
    config = _config(exported, "mixtral")
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["sliding_window"]) == (4, 2, None)
    # transformers adds the load-balancing loss only with output_router_logits: aux_loss 0 switches it off
    assert config["output_router_logits"] and config["router_aux_loss_coef"] == 0.02
    sliding = _config(exported, "mixtral_sliding")
    assert not sliding["output_router_logits"] and sliding["router_jitter_noise"] == 0.1
    assert sliding["sliding_window"] == 5


def test_opt_and_roberta_write_their_offset_tables(exported):
    assert _tensor(exported, "opt", "model.decoder.embed_positions.weight").shape == (66, 32)
    assert _config(exported, "opt")["do_layer_norm_before"]
    post = _config(exported, "opt_post_norm")
    assert (post["do_layer_norm_before"], post["enable_bias"], post["activation_function"]) == (False, False, "gelu")
    config = _config(exported, "roberta")
    assert (config["max_position_embeddings"], config["pad_token_id"], config["type_vocab_size"]) == (165, 100, 1)
    assert _tensor(exported, "roberta", "roberta.embeddings.position_embeddings.weight").shape == (165, 32)


def test_untied_heads_keep_their_own_matrix(exported):
    """mT5 (transformers 5 ties it unless the file holds a different lm_head) and DistilBERT."""
    mt5 = hf_exported(exported["mt5"][2])
    assert mt5.lm_head.weight.data_ptr() != mt5.shared.weight.data_ptr()
    assert _config(exported, "mt5")["tie_word_embeddings"] is False
    distil = hf_exported(exported["distilbert_untied"][2])
    assert distil.vocab_projector.weight.data_ptr() != distil.distilbert.embeddings.word_embeddings.weight.data_ptr()


# --- what the families lack --------------------------------------------------------------------

REFUSED = """lmspec 1
model shared_expert { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 48,
                      position: rope, norm: rmsnorm, activation: swiglu, bias: false,
                      mlp: moe(experts: 4, top_k: 2, shared_experts: 1) }
model biased_moe { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 48,
                   position: rope, norm: rmsnorm, activation: swiglu, bias: true, mlp: moe(experts: 4, top_k: 2) }
model neox_interleaved { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4,
                         position: rope(fraction: 25%, layout: interleaved), norm: layernorm, activation: gelu,
                         bias: true, residual: parallel(norms: 2) }
model gptj_theta { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4,
                   position: rope(theta: 20_000, fraction: 50%, layout: interleaved), norm: layernorm,
                   activation: gelu_tanh, bias: false, mlp_bias: true, residual: parallel, head: lm(bias: true) }
model phi_no_head_bias { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 4,
                         position: rope(fraction: 50%), norm: layernorm, activation: gelu, bias: true,
                         residual: parallel }
model opt_eps { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: learned,
                position_offset: 2, norm: layernorm, norm_eps: 1e-6, activation: relu, bias: true }
model mt5_relu { arch: encoder_decoder, vocab: 100, context: 64, d_model: 32, heads: 4, attention_scale: none,
                 position: relative(buckets: 32, max_distance: 128), norm: rmsnorm, activation: relu, bias: false,
                 tie_embeddings: false, encoder { layers: 1, attention: bidirectional },
                 decoder { layers: 1, attention: causal } }
model distilbert_eps { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, placement: post,
                       embed_norm: true, final_norm: false, norm_eps: 1e-5, head: mlm(transform: true) }
"""


@pytest.mark.parametrize(("name", "family", "gap"), [
    ("shared_expert", "mixtral", "shared_experts: 1 (mixtral has no expert every token runs through: its mixture of "
                                 "experts (mlp: moe(...)) has shared_experts: 0)"),
    ("biased_moe", "mixtral", "bias: true (mixtral has no biases)"),
    ("neox_interleaved", "gpt_neox", "rope: rope(theta: 10_000, fraction: 25%, layout: interleaved) (gpt_neox has "
                                     "rope in the half layout (the interleaved one is gptj's))"),
    ("gptj_theta", "gptj", "rope: rope(theta: 20_000, fraction: 50%, layout: interleaved) (gptj has rope(theta: "
                           "10_000, layout: interleaved), unscaled)"),
    ("phi_no_head_bias", "gpt_neox",
     "residual: parallel (gpt_neox has parallel(norms: 2) or sequential (use_parallel_residual); one shared norm is "
     "gptj's and phi's)"),
    ("opt_eps", "gpt2", "position_offset: 2 (gpt2 has positions from row 0)"),
    # mT5 is T5 v1.1: an untied relu model is neither (and T5 is the closer)
    ("mt5_relu", "t5", "tie_embeddings: false (t5 has true: transformers 5 always ties T5's lm_head)"),
    ("distilbert_eps", "bert", "segments: 0 (bert has token-type embeddings: segments 1 or more)"),
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


@pytest.mark.parametrize(("name", "closest", "also"), [
    ("phi_no_head_bias", "gpt_neox (GPTNeoXForCausalLM)", "phi (PhiForCausalLM), which lacks:\n"
                                                         "  - head: lm (phi has lm(bias: true) or none)"),
    ("opt_eps", "gpt2 (GPT2LMHeadModel)",
     "opt (OPTForCausalLM), which lacks:\n  - norm_eps: 1e-6 (opt has 1e-5: nn.LayerNorm's default, not a config field)"),
    ("distilbert_eps", "bert (BertForMaskedLM)",
     "distilbert (DistilBertForMaskedLM), which lacks:\n"
     "  - norm_eps: 1e-5 (distilbert has 1e-12, fixed in modeling_distilbert)"),
])
def test_a_family_as_close_as_the_closest_is_named_with_what_it_lacks(name, closest, also):
    with pytest.raises(HFExportError) as info:
        export_family(load_arch(REFUSED, name))
    assert f"The closest is {closest}, which lacks:\n" in str(info.value)
    assert f"\nAs close is {also}" in str(info.value)


def test_the_refusal_lists_the_families_of_the_model_s_kind_only():
    with pytest.raises(HFExportError) as info:
        export_family(load_arch(REFUSED, "distilbert_eps"))
    assert "no encoder family lmspec exports (bert, roberta, distilbert) computes what it computes" in str(info.value)
    with pytest.raises(HFExportError) as info:
        export_family(load_arch(REFUSED, "opt_eps"))
    assert ("(llama, mistral, qwen2, qwen3, phi3, mixtral, gpt2, opt, gpt_neox, phi, gptj, falcon, bloom, mpt, gemma, "
            "gemma2)") in str(info.value)


def test_roberta_names_the_pad_id_its_positions_need():
    """RoBERTa's positions start after the pad token's row: position_offset must be pad_id + 1.
    (BERT is as close here, and is named first; RoBERTa's own reading says what it lacks.)"""
    from lmspec.compiler.hf.export_fits import _FITS

    arch = load_arch(SPEC.replace("pad_id: 100,\n                position_offset: 101", "pad_id: 7,\n"
                                  "                position_offset: 101"), "roberta")
    assert _FITS["roberta"](arch).gaps == {
        "pad_id": "pad_id: 7 (roberta has pad_id = position_offset - 1 = 100: it numbers positions from the pad "
                  "token's row on)"}
    with pytest.raises(HFExportError) as info:
        export_family(arch)
    assert info.value.family == "bert" and "position_offset: 101 (bert has positions from row 0)" in info.value.gaps


def test_a_scale_written_as_one_over_sqrt_head_dim_exports_as_the_plain_scale(tmp_path):
    """`attention_scale: 0.25` with head_dim 16 is inverse_sqrt: llama takes it, the import reads it back
    as inverse_sqrt, and transformers computes the same logits; any other number is refused."""
    spec = ("lmspec 1\nmodel m { vocab: 100, context: 32, layers: 2, d_model: 64, heads: 4, position: rope, "
            "norm: rmsnorm, activation: swiglu, bias: false, attention_scale: %s }\n")
    arch = load_arch(spec % "0.25", "m")
    assert arch.decoder.layers[0].attention.scale == 0.25
    assert export_family(arch) == ("llama", "LlamaForCausalLM")
    torch.manual_seed(0)
    model = build_model(arch).eval()
    config, tensors = export_hf(arch, model.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(outputs(model(ids)), hf(ids).logits, atol=TOL, rtol=0)
    with pytest.raises(HFExportError, match=r"attention_scale: 0.3 \(llama has inverse_sqrt\)"):
        export_family(load_arch(spec % "0.3", "m"))
