"""The Hugging Face families the newer architecture keys make expressible (issue 10): each a tiny
random model saved by transformers, imported by lmspec. The written spec passes `check` with the
parameter count transformers reports, its arch equals the import's, the meta-device wiring check
agrees shape for shape, and the logits agree within 1e-4 on a right-padded batch. Options lmspec
cannot reproduce are refused naming the field. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: pip install lmspec[test]

from lmspec.compiler.analysis import count_parameters, meta_check  # noqa: E402
from lmspec.compiler.api import check_text  # noqa: E402
from lmspec.compiler.hf import (  # noqa: E402
    HFImportError,
    arch_from_hf_config,
    load_hf_model,
    read_hf_config,
    spec_from_hf,
)

transformers.logging.set_verbosity_error()

from hf_support import (  # noqa: E402, I001
    TOL, VOCAB, assert_generation_matches, assert_imports_exactly, assert_logits_match, ckpts_fixture, hf_model, inputs)

T = transformers

LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
QWEN = dict(LLAMA, num_hidden_layers=3)
NEOX = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
            max_position_embeddings=64)  # head_dim 16: rotary_pct 0.25 rotates 4 of them
PHI = dict(NEOX, num_attention_heads=4, intermediate_size=128)
MT5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4)
# a pad id the test inputs never draw (ids < VOCAB): RoBERTa numbers positions from the pad tokens
ROBERTA = dict(vocab_size=VOCAB + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               pad_token_id=VOCAB, max_position_embeddings=VOCAB + 1 + 64)
OPT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
           max_position_embeddings=64, word_embed_proj_dim=32)
# head_dim 16 beside hidden_size / heads = 8; one key-value head, as Gemma-2b
GEMMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
PHI3 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
DISTILBERT = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                  activation="gelu")

# name -> (model class, config): the model is built from the config with seed 0
FAMILIES = {
    # attention_bias (q, k, v, o) without mlp_bias: lmspec's qkv/out biases without the MLP's
    "llama_attention_bias": (T.LlamaForCausalLM, T.LlamaConfig(**LLAMA, attention_bias=True)),
    "llama_mlp_bias": (T.LlamaForCausalLM, T.LlamaConfig(**LLAMA, mlp_bias=True)),
    # Qwen2: biases on q, k and v only; tied like Qwen2.5-0.5B
    "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config(**QWEN, tie_word_embeddings=True)),
    # sliding windows on the layers from max_window_layers on, shorter than the input
    "qwen2_sliding": (T.Qwen2ForCausalLM,
                      T.Qwen2Config(**QWEN, use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "qwen2_bare": (T.Qwen2Model, T.Qwen2Config(**QWEN)),
    # Qwen3: QK-norm (an RMSNorm over each query and key head, before RoPE); head_dim free of d_model / heads
    "qwen3": (T.Qwen3ForCausalLM, T.Qwen3Config(**QWEN, head_dim=16)),
    "qwen3_attention_bias": (T.Qwen3ForCausalLM, T.Qwen3Config(**QWEN, head_dim=8, attention_bias=True,
                                                               use_sliding_window=True, sliding_window=5,
                                                               max_window_layers=2)),
    # Llama 3.1's scaled RoPE, with an original context shorter than the input so that every band
    # of frequencies (kept, interpolated, divided) is exercised
    "llama3_scaling": (T.LlamaForCausalLM, T.LlamaConfig(**{**LLAMA, "hidden_size": 64, "num_attention_heads": 2,
                                                             "num_key_value_heads": 1}, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_linear_scaling": (T.LlamaForCausalLM, T.LlamaConfig(**LLAMA, rope_parameters={
        "rope_type": "linear", "rope_theta": 10_000.0, "factor": 4.0})),
    # GPT-NeoX / Pythia: attention and MLP side by side, a LayerNorm each; RoPE on 25% of each head
    "gpt_neox": (T.GPTNeoXForCausalLM, T.GPTNeoXConfig(**NEOX)),
    "gpt_neox_sequential": (T.GPTNeoXForCausalLM, T.GPTNeoXConfig(**NEOX, use_parallel_residual=False,
                                                                  rope_parameters={"rope_type": "default",
                                                                                   "rope_theta": 1e4,
                                                                                   "partial_rotary_factor": 0.5})),
    "gpt_neox_bare": (T.GPTNeoXModel, T.GPTNeoXConfig(**NEOX)),
    # Phi-2: one LayerNorm feeding both branches, RoPE on part of each head, an LM head with a bias;
    # here with grouped-query heads and Phi's per-head qk_layernorm as well
    "phi": (T.PhiForCausalLM, T.PhiConfig(**PHI)),
    # GPT-J: one LayerNorm feeding both branches, RoPE on rotary_dim of each head in the interleaved
    # layout, no attention biases, biases on the MLP and the LM head
    "gptj": (T.GPTJForCausalLM, T.GPTJConfig(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                             rotary_dim=8, n_inner=128)),
    "phi_qk_layernorm": (T.PhiForCausalLM, T.PhiConfig(**PHI, num_key_value_heads=2, qk_layernorm=True,
                                                       rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                        "partial_rotary_factor": 0.25})),
    # DistilBERT: BERT's post-norm encoder without token types or pooler; BERT's MLM head, tied
    "distilbert": (T.DistilBertForMaskedLM, T.DistilBertConfig(**DISTILBERT)),
    "distilbert_bare": (T.DistilBertModel, T.DistilBertConfig(**DISTILBERT)),
    "distilbert_untied": (T.DistilBertForMaskedLM, T.DistilBertConfig(**DISTILBERT, tie_word_embeddings=False)),
    # mT5: T5 v1.1 (gated-gelu, the tanh approximation) whose head is never scaled
    "mt5": (T.MT5ForConditionalGeneration, T.MT5Config(**MT5)),
    "mt5_bare": (T.MT5Model, T.MT5Config(**MT5, feed_forward_proj="gated-silu")),
    # RoBERTa: BERT with learned positions from row pad_token_id + 1 (here 101); one token type as released
    "roberta": (T.RobertaForMaskedLM, T.RobertaConfig(**ROBERTA, type_vocab_size=1)),
    "roberta_bare": (T.RobertaModel, T.RobertaConfig(**ROBERTA)),
    # OPT: learned positions from row 2, relu, pre-norm with a final LayerNorm, tied head
    "opt": (T.OPTForCausalLM, T.OPTConfig(**OPT)),
    # OPT-350m's post-norm layers, without a final LayerNorm (but here without its projections)
    "opt_post_norm": (T.OPTForCausalLM, T.OPTConfig(**OPT, do_layer_norm_before=False)),
    "opt_bare": (T.OPTModel, T.OPTConfig(**OPT, enable_bias=False)),
    # Gemma: embeddings times sqrt(hidden_size), gated tanh-GELU, free head_dim, tied head, RMSNorm x * (1 + w)
    "gemma": (T.GemmaForCausalLM, T.GemmaConfig(**GEMMA)),
    "gemma_bare": (T.GemmaModel, T.GemmaConfig(**GEMMA, attention_bias=True)),
    # Phi-3: fused qkv_proj and gate_up_proj; here RoPE on half of each head and a window shorter than the input
    "phi3": (T.Phi3ForCausalLM, T.Phi3Config(**PHI3, sliding_window=5, rope_parameters={
        "rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5})),
    "phi3_bare": (T.Phi3Model, T.Phi3Config(**PHI3)),
}


ckpts = ckpts_fixture(FAMILIES, "hf_families")



@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_imported_spec_checks_with_the_parameter_count_of_transformers(ckpts, name):
    assert_imports_exactly(ckpts[name])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers_with_padding(ckpts, name):
    assert_logits_match(ckpts[name])


def test_qwen2_biases_only_q_k_and_v(ckpts):
    arch, model = load_hf_model(ckpts["qwen2"])
    layer = arch.decoder.layers[0]
    assert (layer.biased("qkv"), layer.biased("out"), layer.biased("mlp")) == (True, False, False)
    block = model.decoder.layers[0]
    assert block.attn.qkv_proj.bias is not None and block.attn.o_proj.bias is None
    assert block.mlp.up_proj.bias is None
    text = spec_from_hf(ckpts["qwen2"], "q")
    assert "  bias: false\n  qkv_bias: true\n" in text and "out_bias" not in text


def test_qwen2_slides_its_window_over_the_later_layers_only(ckpts):
    arch = load_hf_model(ckpts["qwen2_sliding"])[0]
    assert [L.attention.kind for L in arch.decoder.layers] == ["causal", "sliding", "sliding"]
    text = spec_from_hf(ckpts["qwen2_sliding"], "q")  # the model-level key is the commoner kind
    assert "  attention: sliding(window: 5)\n" in text and "layer 0 { attention: causal }" in text


def test_qwen2_window_changes_the_logits(ckpts):
    """The window is shorter than the input, so the comparison above really tests it."""
    ids, _ = inputs()
    _, model = load_hf_model(ckpts["qwen2_sliding"])
    for layer in model.decoder.layers:
        layer.attn.kind = "causal"
    with torch.no_grad():
        assert (model(ids).logits - hf_model(ckpts["qwen2_sliding"])(ids).logits).abs().max() > 1e-3


def test_qwen3_normalises_each_query_and_key_head(ckpts):
    arch, model = load_hf_model(ckpts["qwen3"])
    layer = arch.decoder.layers[0]
    assert layer.qk_norm and layer.head_dim == 16 and not any(layer.biased(p) for p in ("qkv", "out", "mlp"))
    assert model.decoder.layers[0].attn.q_norm.weight.shape == (16,)
    assert "  qk_norm: true\n" in spec_from_hf(ckpts["qwen3"], "q")


def test_qk_norm_changes_the_logits(ckpts):
    """The norms' weights are not all one, so the comparison above really tests where they act."""
    ids, _ = inputs()
    _, model = load_hf_model(ckpts["qwen3"])
    for layer in model.decoder.layers:
        layer.attn.q_norm = layer.attn.k_norm = None
    with torch.no_grad():
        assert (model(ids).logits - hf_model(ckpts["qwen3"])(ids).logits).abs().max() > 1e-3


def test_rope_scaling_is_read_and_written(ckpts):
    arch = load_hf_model(ckpts["llama3_scaling"])[0]
    position = arch.decoder.layers[0].position
    assert (position.scaling.kind, position.scaling.factor, position.scaling.original_context) == ("llama3", 8.0, 16)
    text = spec_from_hf(ckpts["llama3_scaling"], "l")
    assert ("position: rope(theta: 500_000, scaling: llama3(factor: 8.0, low_freq: 1.0, high_freq: 4.0, "
            "original_context: 16))") in text
    assert "scaling: linear(factor: 4.0)" in spec_from_hf(ckpts["llama_linear_scaling"], "l")


@pytest.mark.parametrize("name", ["llama3_scaling", "llama_linear_scaling"])
def test_rope_scaling_changes_the_logits(ckpts, name):
    """Without its scaling the model computes something else, so the comparison above tests it."""
    import dataclasses

    from lmspec.compiler.build import build_model
    from lmspec.compiler.hf import load_hf_weights

    arch = load_hf_model(ckpts[name])[0]
    plain = dataclasses.replace(arch.decoder.layers[0].position, scaling=None)
    layers = tuple(dataclasses.replace(L, position=plain) for L in arch.decoder.layers)
    unscaled = dataclasses.replace(arch, position=plain, decoder=dataclasses.replace(arch.decoder, layers=layers))
    model = build_model(unscaled)
    load_hf_weights(model, ckpts[name])
    ids, _ = inputs(T=40)
    with torch.no_grad():
        assert (model.eval()(ids).logits - hf_model(ckpts[name])(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize(("params", "message"), [
    ({"rope_type": "proportional", "rope_theta": 1e4, "factor": 4.0},
     r"rope_parameters.rope_type='proportional'.*default, linear, llama3, yarn and longrope"),
    ({"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}, r"rope_type='dynamic'"),
    ({"rope_type": "longrope", "rope_theta": 1e4}, r"rope_type='longrope'"),
    ({"rope_type": "linear", "rope_theta": 1e4}, r"rope_type='linear' but no rope_parameters.factor"),
    ({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0},
     r"no rope_parameters.high_freq_factor"),
])
def test_rope_scaling_lmspec_does_not_compute_is_refused_naming_the_field(ckpts, params, message):
    config = {**read_hf_config(ckpts["llama3_scaling"]), "rope_parameters": params}
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config(config, "l")


def test_transformers_4_rope_scaling_is_read_too(ckpts):
    config = {k: v for k, v in read_hf_config(ckpts["llama3_scaling"]).items() if k != "rope_parameters"}
    config.update(rope_theta=500_000.0, rope_scaling={"type": "linear", "factor": 2.0})
    position = arch_from_hf_config(config, "l").position
    assert (position.theta, position.scaling.kind, position.scaling.factor) == (500_000.0, "linear", 2.0)


def test_gpt_neox_runs_attention_and_mlp_side_by_side_on_a_quarter_of_each_head(ckpts):
    arch, model = load_hf_model(ckpts["gpt_neox"])
    layer = arch.decoder.layers[0]
    assert layer.parallel and not layer.shared_norm and layer.position.rotary_dims(layer.head_dim) == 4
    assert model.decoder.layers[0].mlp_norm is not None
    text = spec_from_hf(ckpts["gpt_neox"], "pythia")
    assert "  residual: parallel(norms: 2)\n" in text and "  position: rope(theta: 10_000, fraction: 25%)\n" in text
    sequential = load_hf_model(ckpts["gpt_neox_sequential"])[0].decoder.layers[0]
    assert not sequential.parallel and sequential.position.fraction == 0.5


def test_phi_shares_one_norm_and_biases_its_lm_head(ckpts):
    arch, model = load_hf_model(ckpts["phi"])
    layer = arch.decoder.layers[0]
    assert layer.parallel and layer.shared_norm and layer.bias and arch.heads[0].bias
    assert model.decoder.layers[0].mlp_norm is None and model.lm_head.bias is not None
    text = spec_from_hf(ckpts["phi"], "phi")
    assert "  residual: parallel\n" in text and "head: lm(bias: true)" in text and "fraction: 50%" in text
    qk = load_hf_model(ckpts["phi_qk_layernorm"])[0].decoder.layers[0]
    assert qk.qk_norm and qk.norm == "layernorm" and qk.kv_heads == 2


def test_gptj_rotates_pairs_of_neighbours_in_part_of_each_head(ckpts):
    arch, model = load_hf_model(ckpts["gptj"])
    layer = arch.decoder.layers[0]
    assert (layer.position.layout, layer.position.rotary_dims(layer.head_dim)) == ("interleaved", 8)
    assert layer.parallel and layer.shared_norm and (layer.biased("qkv"), layer.biased("mlp")) == (False, True)
    text = spec_from_hf(ckpts["gptj"], "gptj")
    assert "  position: rope(theta: 10_000, fraction: 50%, layout: interleaved)\n" in text
    assert "  bias: false\n  mlp_bias: true\n" in text and "head: lm(bias: true)" in text
    config = {**read_hf_config(ckpts["gptj"]), "rotary_dim": None}
    with pytest.raises(HFImportError, match=r"gptj config.json has no 'rotary_dim'"):
        arch_from_hf_config(config, "g")


def test_the_interleaved_layout_changes_the_logits(ckpts):
    import dataclasses

    ids, _ = inputs()
    _, model = load_hf_model(ckpts["gptj"])
    for block in model.decoder.layers:
        block.attn.rotary = dataclasses.replace(block.attn.rotary, interleaved=False)
    with torch.no_grad():
        assert (model(ids).logits - hf_model(ckpts["gptj"])(ids).logits).abs().max() > 1e-3


def test_gpt_neox_qkv_rows_are_regrouped_head_by_head(ckpts):
    """GPT-NeoX stores [q k v] per head; loaded as stored, the logits would be another model's."""
    import dataclasses

    from lmspec.compiler.hf import mapping

    ids, _ = inputs()
    plain = dataclasses.replace(mapping._gpt_neox(load_hf_model(ckpts["gpt_neox"])[0]).rules[2], per_head=False)
    assert plain.target == "decoder.layers.{i}.attn.qkv_proj.{wb}"
    original = mapping._MAPPINGS["gpt_neox"]
    mapping._MAPPINGS["gpt_neox"] = lambda arch: dataclasses.replace(
        original(arch), rules=tuple(plain if r.target == plain.target else r for r in original(arch).rules))
    try:
        _, wrong = load_hf_model(ckpts["gpt_neox"])
    finally:
        mapping._MAPPINGS["gpt_neox"] = original
    with torch.no_grad():
        assert (wrong(ids).logits - hf_model(ckpts["gpt_neox"])(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["gpt_neox", "phi_qk_layernorm", "gptj", "qwen3", "llama3_scaling", "opt"])
def test_greedy_generation_matches_transformers_with_left_padding(ckpts, name):
    """The KV cache with partial rotary, QK-norm, parallel layers and scaled RoPE, token for token."""
    assert_generation_matches(ckpts[name])


def test_old_gpt_neox_files_with_buffers_load(ckpts, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / "pythia_old"
    shutil.copytree(ckpts["gpt_neox"], path)
    tensors = load_file(path / "model.safetensors")
    tensors["gpt_neox.layers.0.attention.bias"] = torch.tril(torch.ones(1, 1, 64, 64)).bool()
    tensors["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(-1e9)
    tensors["gpt_neox.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(2)
    save_file(tensors, path / "model.safetensors")
    ids, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(path)[1](ids).logits, hf_model(ckpts["gpt_neox"])(ids).logits,
                                   atol=TOL, rtol=0)


def test_unknown_layer_types_are_refused(ckpts):
    kinds = ["full_attention", "chunked_attention", "full_attention"]
    config = {**read_hf_config(ckpts["qwen2"]), "layer_types": kinds}
    with pytest.raises(HFImportError, match=r"layer_types=.*chunked_attention"):
        arch_from_hf_config(config, "q")


# --- export: the families lmspec writes back, and what none of them expresses ------------------

EXPORTED = """lmspec 1
model qwen2 { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, d_ff: 64,
              position: rope(theta: 1M), norm: rmsnorm, norm_eps: 1e-6, activation: swiglu, bias: false,
              qkv_bias: true, tie_embeddings: true }
model llama_attention_bias { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                             position: rope, norm: rmsnorm, activation: swiglu, bias: true, mlp_bias: false }
model qwen3 { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 2, head_dim: 16,
              d_ff: 64, position: rope(theta: 1M), norm: rmsnorm, norm_eps: 1e-6, activation: swiglu, bias: false,
              qk_norm: true }
model llama31 { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 64, heads: 2, kv_heads: 1, d_ff: 64,
                position: rope(theta: 500k, scaling: llama3(factor: 8, original_context: 16)), norm: rmsnorm,
                activation: swiglu, bias: false }
model llama_linear { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                     position: rope(scaling: linear(factor: 4)), norm: rmsnorm, activation: swiglu, bias: false }
model llama_mlp_bias { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, d_ff: 64,
                       position: rope, norm: rmsnorm, activation: swiglu, bias: false, mlp_bias: true }
"""
EXPORT_FAMILIES = {"qwen2": ("qwen2", "Qwen2ForCausalLM"), "qwen3": ("qwen3", "Qwen3ForCausalLM"),
                   "llama_attention_bias": ("llama", "LlamaForCausalLM"),
                   "llama_mlp_bias": ("llama", "LlamaForCausalLM"), "llama31": ("llama", "LlamaForCausalLM"),
                   "llama_linear": ("llama", "LlamaForCausalLM")}


def _export(root: Path, name: str):
    import json

    from safetensors.torch import save_file

    from lmspec.compiler.api import load_arch
    from lmspec.compiler.build import build_model
    from lmspec.compiler.hf import export_family, export_hf

    arch = load_arch(EXPORTED, name)
    assert export_family(arch) == EXPORT_FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config, tensors = export_hf(arch, model.state_dict())
    (root / name).mkdir()
    (root / name / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return arch, model.eval(), root / name


@pytest.mark.parametrize("name", sorted(EXPORT_FAMILIES))
def test_an_export_loads_in_transformers_with_the_same_logits(tmp_path, name):
    arch, model, path = _export(tmp_path, name)
    cls = getattr(transformers, EXPORT_FAMILIES[name][1])
    hf, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask = inputs()
    real = mask.bool()
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask).logits, hf.eval()(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)
    assert load_hf_model(path, name)[0] == arch


REFUSED = """lmspec 1
model out_only { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                 norm: rmsnorm, activation: swiglu, bias: false, out_bias: true }
model partial_rope { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, norm: rmsnorm,
                     position: rope(layout: interleaved), activation: swiglu, bias: false }
model gpt2_qk_norm { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, activation: gelu_tanh,
                     qk_norm: true, tie_embeddings: true }
model head_bias { arch: decoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, position: rope,
                  norm: rmsnorm, activation: swiglu, bias: false, head: lm(bias: true) }
model roberta { arch: encoder, vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, segments: 1,
                embed_norm: true, placement: post, position_offset: 2, head: mlm(transform: true) }
"""


@pytest.mark.parametrize(("name", "family", "gap"), [
    ("out_only", "llama", "bias: only out_bias (llama has one attention_bias for q, k, v and o, and mlp_bias)"),
    ("head_bias", "llama", "head: lm(bias: true) (llama has lm or none)"),
    ("gpt2_qk_norm", "gpt2", "qk_norm: true (gpt2 has no norm on queries and keys; qwen3 has one)"),
    ("roberta", "bert", "position_offset: 2 (bert has positions from row 0)"),
    ("partial_rope", "llama",
     "rope: rope(theta: 10_000, layout: interleaved) (llama has rope over every dimension of a head, in the half "
     "layout)"),
])
def test_what_no_family_expresses_is_refused_naming_the_feature(name, family, gap):
    from lmspec.compiler.api import load_arch
    from lmspec.compiler.hf import HFExportError, export_family

    with pytest.raises(HFExportError) as info:
        export_family(load_arch(REFUSED, name))
    assert info.value.family == family and gap in info.value.gaps, info.value.gaps


# --- DistilBERT, T5 v1.1 / mT5, RoBERTa, OPT ------------------------------------------------


def test_distilbert_is_bert_without_token_types_or_pooler_with_bert_s_mlm_head(ckpts):
    arch, model = load_hf_model(ckpts["distilbert"])
    layer = arch.encoder.layers[0]
    assert (arch.segments, arch.pooler, arch.embed_norm, layer.placement, layer.norm_eps) == (0, False, True,
                                                                                              "post", 1e-12)
    assert arch.heads == (arch.heads[0],) and arch.heads[0].transform and arch.tie_embeddings
    assert model.mlm_head.decoder.weight is model.embed.weight and model.mlm_head.decoder.bias is not None
    text = spec_from_hf(ckpts["distilbert"], "d")
    assert "  segments: 0\n" in text and "  head: mlm(transform: true)\n" in text
    assert not load_hf_model(ckpts["distilbert_untied"])[0].tie_embeddings
    assert load_hf_model(ckpts["distilbert_bare"])[0].heads == ()


def test_distilbert_sinusoidal_positions_are_refused_naming_the_field(ckpts):
    config = {**read_hf_config(ckpts["distilbert"]), "sinusoidal_pos_embds": True}
    with pytest.raises(HFImportError, match=r"distilbert config.json sets sinusoidal_pos_embds=True"):
        arch_from_hf_config(config, "d")


def test_mt5_is_t5_v1_1_with_an_unscaled_head(ckpts):
    arch = load_hf_model(ckpts["mt5"])[0]
    assert arch.tie_embeddings and arch.tied_head_scale == 1.0
    assert (arch.encoder.n_layers, arch.decoder.n_layers) == (2, 3)
    assert arch.encoder.layers[0].activation == "geglu_tanh"
    text = spec_from_hf(ckpts["mt5"], "mt5")
    assert "  head_scale: 1.0\n" in text and "  activation: geglu_tanh\n" in text
    assert load_hf_model(ckpts["mt5_bare"])[0].heads == ()


@pytest.mark.parametrize("model_type", ["mt5", "t5"])
def test_an_untied_v1_1_head_resaved_by_transformers_5_stays_untied(ckpts, tmp_path, model_type):
    """transformers 5 writes tie_word_embeddings: true into every (m)T5 config, and unties when the
    file holds its own lm_head.weight; read as tied, the head would be the embeddings."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / model_type
    shutil.copytree(ckpts["mt5"], path)
    tensors = load_file(path / "model.safetensors")
    tensors["lm_head.weight"] = torch.randn(VOCAB, 32)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    if model_type == "t5":  # a T5 v1.1 as transformers 5 re-saves it
        config.update(model_type="t5", architectures=["T5ForConditionalGeneration"], scale_decoder_outputs=False)
    (path / "config.json").write_text(json.dumps(config))
    assert config["tie_word_embeddings"] is True
    arch, model = load_hf_model(path)
    assert not arch.tie_embeddings and arch.tied_head_scale == 1.0
    torch.testing.assert_close(model.lm_head.weight, tensors["lm_head.weight"])
    hf = hf_model(path)
    assert hf.lm_head.weight is not hf.shared.weight
    assert count_parameters(arch).total == sum(p.numel() for p in hf.parameters())
    ids, mask = inputs()
    decoder_ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                                   hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                                   atol=TOL, rtol=0)


def test_roberta_positions_start_after_the_pad_row(ckpts, tmp_path):
    """As released: pad_token_id 1, so position p reads row p + 2 of a table of context + 2 rows;
    the padded tail holds pad tokens, which transformers reads as such."""
    config = T.RobertaConfig(**{**ROBERTA, "vocab_size": VOCAB, "pad_token_id": 1, "max_position_embeddings": 66})
    torch.manual_seed(0)
    T.RobertaForMaskedLM(config).save_pretrained(tmp_path / "r", safe_serialization=True)
    arch, model = load_hf_model(tmp_path / "r")
    assert (arch.context, arch.position_offset) == (64, 2)
    assert model.pos_embed.weight.shape == (66, 32) and count_parameters(arch).total == sum(
        p.numel() for p in hf_model(tmp_path / "r").parameters())
    text = spec_from_hf(tmp_path / "r", "r")
    assert "  context: 64\n" in text and "  position_offset: 2\n" in text and "  pad_id: 1\n" in text
    ids = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = hf_model(tmp_path / "r")(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"65 positions do not fit the learned position table \(64 positions"):
        model(torch.full((1, 65), 2))


@pytest.mark.parametrize(("changes", "message"), [
    ({"max_position_embeddings": 2}, r"max_position_embeddings=2, which leaves no position after pad_token_id=1"),
    ({"pad_token_id": None}, r"roberta config.json has no 'pad_token_id'"),
    ({"hidden_act": "relu"}, r"hidden_act='relu': RobertaForMaskedLM's head applies the exact gelu"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'"),
])
def test_roberta_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, message):
    config = {**read_hf_config(ckpts["roberta"]), "pad_token_id": 1, **changes}
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config(config, "r")


OFFSET = """lmspec 1
model m { arch: encoder, vocab: 100, context: 64, layers: 1, d_model: 32, heads: 4, position: learned,
          position_offset: 2 }
model rope { arch: decoder, vocab: 100, context: 64, layers: 1, d_model: 32, heads: 4, position: rope,
             position_offset: 2 }
"""


def test_position_offset_adds_rows_before_position_zero_and_needs_learned_positions():
    from lmspec.compiler.analysis.params import parameter_shapes

    report = check_text(OFFSET, "offset.lmspec")
    arch = report.models["m"]
    assert arch.position_offset == 2
    assert next(s.shape for s in parameter_shapes(arch) if s.name == "pos_embed.weight") == (66, 32)
    assert meta_check(arch, seq_len=8, check_unused=False) == []
    from lmspec.compiler.graphs import architecture_graph

    node = architecture_graph(arch, report.spec).nodes["position_embedding"]
    assert node["rows"] == 66 and node["label"] == "learned positions\n66 x 32, from row 2"
    [d] = [d for d in report.diagnostics if d.code == "LMS095"]
    assert "model 'rope' does not read 'position_offset'" in d.message and d.span.line == 5
    assert d.help == "remove `position_offset`, or set `position: learned`"


def test_opt_reads_its_positions_from_row_2(ckpts):
    arch, model = load_hf_model(ckpts["opt"])
    layer = arch.decoder.layers[0]
    assert (arch.position_offset, arch.context, layer.placement, layer.activation) == (2, 64, "pre", "relu")
    assert arch.decoder.final_norm and arch.tie_embeddings and model.pos_embed.weight.shape == (66, 32)
    text = spec_from_hf(ckpts["opt"], "opt")
    assert "  position_offset: 2\n" in text and "  placement: pre\n" in text and "  final_norm: true\n" in text
    post = load_hf_model(ckpts["opt_post_norm"])[0]
    assert post.decoder.layers[0].placement == "post" and not post.decoder.final_norm
    assert not load_hf_model(ckpts["opt_bare"])[0].decoder.layers[0].bias
    config = {**read_hf_config(ckpts["opt"]), "_remove_final_layer_norm": True}
    assert not arch_from_hf_config(config, "o").decoder.final_norm


@pytest.mark.parametrize(("changes", "message"), [
    ({"word_embed_proj_dim": 16}, r"opt config.json sets word_embed_proj_dim=16 beside hidden_size=32: lmspec has no "
                                  r"project_in/project_out"),
    ({"layer_norm_elementwise_affine": False}, r"layer_norm_elementwise_affine=False: lmspec's LayerNorms always"),
    ({"layerdrop": 0.1}, r"layerdrop=0.1: lmspec has no LayerDrop"),
    ({"activation_function": "quick_gelu"}, r"activation_function='quick_gelu', which has no lmspec activation"),
])
def test_opt_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, message):
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config({**read_hf_config(ckpts["opt"]), **changes}, "o")


# --- Gemma ---------------------------------------------------------------------------------


def test_gemma_scales_its_embeddings_and_loads_each_norm_weight_as_it_is(ckpts):
    arch, model = load_hf_model(ckpts["gemma"])
    layer = arch.decoder.layers[0]
    assert (arch.embed_scale, layer.activation, layer.head_dim, arch.tie_embeddings) == (32**0.5, "geglu_tanh", 16,
                                                                                       True)
    hf = hf_model(ckpts["gemma"])
    for ours, theirs in ((model.decoder.layers[1].attn_norm, hf.model.layers[1].input_layernorm),
                         (model.decoder.layers[0].mlp_norm, hf.model.layers[0].post_attention_layernorm),
                         (model.decoder.final_norm, hf.model.norm)):
        assert torch.equal(ours.weight, theirs.weight)  # norm_offset: 1 scales by 1 + w (test_gemma_norms.py)
    text = spec_from_hf(ckpts["gemma"], "g")
    assert "  embed_scale: 5.656854249492381\n" in text and "  activation: geglu_tanh\n" in text
    assert "  head_dim: 16\n" in text and "  tie_embeddings: true\n" in text
    bare = load_hf_model(ckpts["gemma_bare"])[0]
    assert bare.heads == () and bare.decoder.layers[0].biased("qkv") and not bare.decoder.layers[0].biased("mlp")


def test_gemma_norm_gradients_match_transformers(ckpts):
    """d(x * (1 + w))/dw as transformers computes it: norm_offset: 1 trains the weights as Gemma does."""
    ids, mask = inputs()
    _, model = load_hf_model(ckpts["gemma"])
    hf = hf_model(ckpts["gemma"])
    model(ids, attention_mask=mask).logits[mask.bool()].square().mean().backward()
    hf(ids, attention_mask=mask).logits[mask.bool()].square().mean().backward()
    for ours, theirs in ((model.decoder.layers[0].attn_norm, hf.model.layers[0].input_layernorm),
                         (model.decoder.final_norm, hf.model.norm)):
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-5, rtol=1e-4)


def test_gemma_legacy_gelu_is_the_tanh_approximation(ckpts):
    config = {**read_hf_config(ckpts["gemma"]), "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}
    assert arch_from_hf_config(config, "g").decoder.layers[0].activation == "geglu_tanh"
    config = {**read_hf_config(ckpts["gemma"]), "head_dim": None}  # GemmaConfig's own default
    assert arch_from_hf_config(config, "g").decoder.layers[0].head_dim == 256


@pytest.mark.parametrize(("changes", "message"), [
    ({"hidden_act": "gelu", "hidden_activation": "gelu_new"}, None),  # the same tanh approximation: accepted
    ({"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu"},
     r"gemma config.json sets hidden_act='gelu_pytorch_tanh' and hidden_activation='gelu': transformers 5"),
    ({"hidden_act": "quick_gelu"}, r"gemma config.json sets hidden_act='quick_gelu', which has no lmspec activation"),
    ({"use_bidirectional_attention": True}, r"gemma config.json sets use_bidirectional_attention=True"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, r"rope_type='dynamic'"),
])
def test_gemma_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, message):
    config = {**read_hf_config(ckpts["gemma"]), **changes}
    if message is None:
        assert arch_from_hf_config(config, "g").decoder.layers[0].activation == "geglu_tanh"
        return
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config(config, "g")


def test_gemma_exports_as_gemma_and_without_its_offset_norms_names_them(ckpts):
    """Gemma exports as itself (tests/test_hf_gemma2.py loads the export in transformers); the same model
    with plain norms fits no family, and the refusal names gemma and the norms."""
    import dataclasses

    from lmspec.compiler.hf import HFExportError, export_family

    arch = load_hf_model(ckpts["gemma"])[0]
    assert export_family(arch) == ("gemma", "GemmaForCausalLM")
    plain_norms = dataclasses.replace(arch, norm_offset=0.0, decoder=dataclasses.replace(arch.decoder, layers=tuple(
        dataclasses.replace(layer, norm_offset=0.0) for layer in arch.decoder.layers)))
    with pytest.raises(HFExportError) as info:
        export_family(plain_norms)
    assert info.value.family == "gemma", info.value.family
    assert info.value.gaps == ["norm_offset: 0.0 (gemma has norms scaling by 1 + weight: 1)"], info.value.gaps


# --- Phi-3 ---------------------------------------------------------------------------------


def test_phi3_splits_gate_up_proj_and_slides_a_window_over_half_rotated_heads(ckpts):
    arch, model = load_hf_model(ckpts["phi3"])
    layer = arch.decoder.layers[0]
    assert (layer.attention.kind, layer.attention.window, layer.activation) == ("sliding", 5, "swiglu")
    assert layer.position.rotary_dims(layer.head_dim) == 4 and not layer.bias and not arch.tie_embeddings
    hf = hf_model(ckpts["phi3"])
    gate, up = hf.model.layers[1].mlp.gate_up_proj.weight.chunk(2, dim=0)
    assert torch.equal(model.decoder.layers[1].mlp.gate_proj.weight, gate)
    assert torch.equal(model.decoder.layers[1].mlp.up_proj.weight, up)
    assert torch.equal(model.decoder.layers[1].attn.qkv_proj.weight, hf.model.layers[1].self_attn.qkv_proj.weight)
    text = spec_from_hf(ckpts["phi3"], "p")
    assert "  attention: sliding(window: 5)\n" in text and "  position: rope(theta: 10_000, fraction: 50%)\n" in text
    bare = load_hf_model(ckpts["phi3_bare"])[0]
    assert bare.heads == () and bare.decoder.layers[0].attention.kind == "causal"


def test_phi3_window_changes_the_logits(ckpts):
    """The window is shorter than the input, so the logits comparison really tests it."""
    ids, _ = inputs()
    _, model = load_hf_model(ckpts["phi3"])
    for layer in model.decoder.layers:
        layer.attn.kind = "causal"
    with torch.no_grad():
        assert (model(ids).logits - hf_model(ckpts["phi3"])(ids).logits).abs().max() > 1e-3


def test_phi3_gate_up_proj_of_odd_rows_is_a_shape_mismatch(ckpts, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from lmspec.compiler.hf import HFWeightsError

    path = tmp_path / "phi3_broken"
    shutil.copytree(ckpts["phi3_bare"], path)
    tensors = load_file(path / "model.safetensors")
    tensors["layers.0.mlp.gate_up_proj.weight"] = torch.randn(127, 32)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFWeightsError) as info:
        load_hf_model(path)
    assert {m[0] for m in info.value.mismatched} == {"decoder.layers.0.mlp.gate_proj.weight",
                                                      "decoder.layers.0.mlp.up_proj.weight"}
    assert not info.value.missing and not info.value.unexpected


@pytest.mark.parametrize(("changes", "message"), [
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
     r"rope_parameters.rope_type='dynamic'"),
    ({"resid_pdrop": 0.1}, r"phi3 config.json sets attention_dropout=0.0, resid_pdrop=0.1, embd_pdrop=0.0: lmspec "
                           r"has one dropout rate"),
    ({"hidden_act": "quick_gelu"}, r"phi3 config.json sets hidden_act='quick_gelu', which has no lmspec activation"),
])
def test_phi3_options_lmspec_cannot_reproduce_are_refused(ckpts, changes, message):
    with pytest.raises(HFImportError, match=message):
        arch_from_hf_config({**read_hf_config(ckpts["phi3"]), **changes}, "p")


def test_phi3_mini_window_and_equal_dropouts_are_read(ckpts):
    config = {**read_hf_config(ckpts["phi3"]), "sliding_window": 2047, "max_position_embeddings": 4096,
              "attention_dropout": 0.1, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "hidden_act": "gelu_pytorch_tanh"}
    arch = arch_from_hf_config(config, "p")
    layer = arch.decoder.layers[0]
    assert (layer.attention.window, layer.dropout, arch.dropout, layer.activation) == (2047, 0.1, 0.1, "geglu_tanh")


def test_phi3_exports_as_the_llama_it_equals_and_partial_rotary_as_phi3(ckpts, tmp_path):
    import json

    from safetensors.torch import save_file

    from lmspec.compiler.hf import export_family, export_hf

    arch, model = load_hf_model(ckpts["phi3_bare"])
    config, tensors = export_hf(arch, model.state_dict())
    assert config["architectures"] == ["LlamaModel"] and "layers.0.mlp.gate_proj.weight" in tensors
    assert not any("gate_up_proj" in name or "qkv_proj" in name for name in tensors)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "llama" / "model.safetensors"), metadata={"format": "pt"})
    ids, mask = inputs()
    with torch.no_grad():
        ours = T.LlamaModel.from_pretrained(tmp_path / "llama").eval()(ids, attention_mask=mask).last_hidden_state
        theirs = hf_model(ckpts["phi3_bare"])(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=TOL, rtol=0)
    assert export_family(load_hf_model(ckpts["phi3"])[0]) == ("phi3", "Phi3ForCausalLM")
