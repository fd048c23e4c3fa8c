"""The architecture keys of issue 10 — biases per projection, QK-norm, RoPE scaling and partial
rotary, parallel attention + MLP, LayerNorm without bias — each from a spec snippet to what it
builds: the parameters `check` counts are the built model's, tensor for tensor; the FLOPs are
FlopCounterMode's; the spec the import writes reads back as the same architecture; and a value
the model could not honour is a diagnostic. The comparisons with transformers are in
test_hf_families.py."""

from __future__ import annotations

import pytest
import torch

from lmspec.compiler.analysis import count_parameters, flops_per_token, meta_check, parameter_shapes
from lmspec.compiler.analysis.meta import _inputs, _ScalarsOnMeta
from lmspec.compiler.api import check_text, load_arch
from lmspec.compiler.build import build_model
from lmspec.compiler.hf import spec_from_arch

HEADER = "lmspec 1\n"
BASE = "vocab: 101, context: 32, layers: 2, d_model: 32, heads: 4"


def arch_of(keys: str, name: str = "m"):
    return load_arch(f"{HEADER}model {name} {{ {BASE}, {keys} }}\n", name)


def errors_of(keys: str, base: str = BASE) -> list:
    report = check_text(f"{HEADER}model m {{ {base}, {keys} }}\n", "features.lmspec")
    return [d for d in report.diagnostics if d.is_error]


def assert_counts_match_the_built_model(arch) -> None:
    model = build_model(arch, device="meta")
    built = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert {p.name: p.shape for p in parameter_shapes(arch)} == built
    assert count_parameters(arch).total == sum(p.numel() for p in model.parameters())


def assert_flops_match_the_counter(arch, T: int = 16) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(arch, device="meta")
    with _ScalarsOnMeta(), FlopCounterMode(display=False) as counter:
        model(**_inputs(arch, 2, T, T))
    assert 2 * flops_per_token(arch, T).forward_per_sequence == counter.get_total_flops()


def assert_spec_round_trips(arch) -> str:
    text = spec_from_arch(arch, comment="round trip")
    assert load_arch(text, arch.name) == arch
    return text


# ---- biases per projection ------------------------------------------------------------------------


def test_qkv_bias_alone_biases_only_the_fused_projection():
    arch = arch_of("bias: false, qkv_bias: true, activation: swiglu")
    block = build_model(arch).decoder.layers[0]
    assert block.attn.qkv_proj.bias.shape == (3 * 32,)
    assert block.attn.o_proj.bias is None
    assert all(getattr(block.mlp, p).bias is None for p in ("up_proj", "gate_proj", "down_proj"))
    assert count_parameters(arch).total == count_parameters(arch_of("bias: false, activation: swiglu")).total + 2 * 96
    assert_counts_match_the_built_model(arch)


@pytest.mark.parametrize("keys", [
    "bias: false, qkv_bias: true",
    "bias: false, mlp_bias: true",
    "bias: true, out_bias: false",
    "bias: false, qkv_bias: true, layer 1 { mlp_bias: true }",
    "bias: true, layer 0 { bias: false }",
    "head: lm(bias: true)",
    "head: lm(bias: true), tie_embeddings: true",
])
def test_biases_count_build_and_round_trip(keys):
    arch = arch_of(keys)
    assert_counts_match_the_built_model(arch)
    assert_spec_round_trips(arch)


def test_one_spelling_per_model():
    """`bias: true, out_bias: false, mlp_bias: false` and `bias: false, qkv_bias: true` are one
    model, so they lower to one ArchConfig (the import and the export compare them)."""
    assert arch_of("bias: true, out_bias: false, mlp_bias: false") == arch_of("bias: false, qkv_bias: true")
    layer = arch_of("bias: false, qkv_bias: true").decoder.layers[0]
    assert (layer.bias, layer.qkv_bias, layer.out_bias, layer.mlp_bias) == (False, True, None, None)
    assert arch_of("bias: false, qkv_bias: false") == arch_of("bias: false")


def test_a_tied_lm_head_keeps_its_own_bias():
    arch = arch_of("head: lm(bias: true), tie_embeddings: true")
    model = build_model(arch)
    assert model.lm_head.weight is model.embed.weight and model.lm_head.bias.shape == (101,)
    assert count_parameters(arch).breakdown["lm_head"] == 101
    assert (model.lm_head.bias == 0).all()  # initialised as every other bias
    ids = torch.randint(0, 101, (2, 5))
    with torch.no_grad():
        model.lm_head.bias.fill_(1.5)
        shifted = model(ids).logits
        model.lm_head.bias.zero_()
        torch.testing.assert_close(shifted - model(ids).logits, torch.full_like(shifted, 1.5))


def test_the_written_spec_names_the_biased_projections():
    text = assert_spec_round_trips(arch_of("bias: false, qkv_bias: true, head: lm(bias: true)"))
    assert "  bias: false\n  qkv_bias: true\n" in text and "out_bias" not in text and "mlp_bias" not in text
    assert "head: lm(bias: true)" in text
    plain = assert_spec_round_trips(arch_of("bias: true"))
    assert "  bias: true\n" in plain and "qkv_bias" not in plain


def test_biases_cost_no_matmul_flops():
    assert_flops_match_the_counter(arch_of("bias: false, qkv_bias: true, head: lm(bias: true)"))
    assert flops_per_token(arch_of("bias: false, qkv_bias: true"), 16) == flops_per_token(arch_of("bias: true"), 16)


def test_an_encoder_decoder_stack_takes_its_own_bias_keys():
    arch = load_arch(f"""{HEADER}model s {{
  arch: encoder_decoder, vocab: 101, context: 32, d_model: 32, heads: 4, bias: false
  encoder {{ layers: 1, qkv_bias: true }}
  decoder {{ layers: 1, out_bias: true }}
}}
""", "s")
    enc, dec = arch.encoder.layers[0], arch.decoder.layers[0]
    assert (enc.biased("qkv"), enc.biased("out")) == (True, False)
    assert (dec.biased("qkv"), dec.biased("out")) == (False, True)
    model = build_model(arch, device="meta")
    assert model.decoder.layers[0].cross_attn.o_proj.bias is not None
    assert model.decoder.layers[0].cross_attn.kv_proj.bias is None
    assert_counts_match_the_built_model(arch)
    assert_spec_round_trips(arch)


def test_meta_check_passes_with_biases():
    assert meta_check(arch_of("bias: false, qkv_bias: true, head: lm(bias: true)"), seq_len=8) == []


# ---- QK-norm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [
    "qk_norm: true, position: rope, norm: rmsnorm, activation: swiglu, bias: false",
    "qk_norm: true, position: rope, norm: layernorm",  # a LayerNorm per head keeps its bias (Phi's qk_layernorm)
    "qk_norm: true, position: none, kv_heads: 2, head_dim: 16",
    "position: rope, layer 1 { qk_norm: true }",
])
def test_qk_norm_counts_build_and_round_trip(keys):
    arch = arch_of(keys)
    assert_counts_match_the_built_model(arch)
    assert_flops_match_the_counter(arch)
    assert_spec_round_trips(arch)


def test_qk_norm_adds_one_norm_of_head_dim_for_queries_and_one_for_keys():
    plain, normed = arch_of("norm: rmsnorm, kv_heads: 2"), arch_of("norm: rmsnorm, kv_heads: 2, qk_norm: true")
    assert count_parameters(normed).total - count_parameters(plain).total == 2 * 2 * 8  # 2 layers, q and k
    attn = build_model(normed).decoder.layers[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (8,)
    assert arch_of("qk_norm: true").decoder.layers[0].qk_norm


def test_qk_norm_normalises_each_head_before_rope():
    """Every query and key head has unit RMS (times the norm's weight) before it is rotated:
    scaling q_proj's rows leaves the attention unchanged."""
    arch = arch_of("qk_norm: true, norm: rmsnorm, norm_eps: 1e-12, position: rope, bias: false")
    torch.manual_seed(0)
    model = build_model(arch).eval()
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        for block in model.decoder.layers:
            block.attn.qkv_proj.weight[: 32].mul_(7.0)  # the query rows
        torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=0)


def test_qk_norm_in_an_encoder_decoder_leaves_cross_attention_alone():
    arch = load_arch(f"""{HEADER}model s {{
  arch: encoder_decoder, vocab: 101, context: 32, d_model: 32, heads: 4, norm: rmsnorm, qk_norm: true
  encoder {{ layers: 1 }}
  decoder {{ layers: 1 }}
}}
""", "s")
    model = build_model(arch, device="meta")
    assert model.decoder.layers[0].attn.q_norm is not None and not hasattr(model.decoder.layers[0].cross_attn, "q_norm")
    assert_counts_match_the_built_model(arch)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("keys", [
    "heads: 4, qk_norm: true, position: rope, norm: rmsnorm, kv_heads: 2",
    "heads: 4, qk_norm: true, position: none",
    "heads: 4, qk_norm: true, position: rope, norm: rmsnorm, dropout: 0.1",  # CPU: the math kernel
    "heads: 1, qk_norm: true, position: none, dropout: 0.1",
])
def test_qk_norm_activation_estimate_matches_saved_tensors(keys, precision):
    from tests.test_analysis import cpu_activation_estimate, saved_tensor_bytes

    arch = load_arch(f"{HEADER}model m {{ vocab: 101, context: 32, layers: 2, d_model: 32, {keys} }}\n", "m")
    model = build_model(arch).train()
    measured = saved_tensor_bytes(model, arch, 2, 16, 16, autocast=precision == "bf16")
    assert cpu_activation_estimate(arch, 2, 16, 16, precision) == measured


# ---- RoPE: scaling, partial rotary, layout ----------------------------------------------------------


@pytest.mark.parametrize("keys", [
    "position: rope(theta: 500k, scaling: llama3(factor: 8, low_freq: 1, high_freq: 4, original_context: 16))",
    "position: rope(scaling: linear(factor: 4))",
    "position: rope(fraction: 25%)",
    "position: rope(fraction: 50%, layout: interleaved)",
    "position: rope(layout: interleaved), layer 1 { position: rope(fraction: 25%) }",
])
def test_rope_variants_count_build_and_round_trip(keys):
    arch = arch_of(keys)
    assert count_parameters(arch) == count_parameters(arch_of("position: rope"))  # RoPE has no parameters
    assert_counts_match_the_built_model(arch)
    assert_flops_match_the_counter(arch)
    assert_spec_round_trips(arch)
    assert meta_check(arch, seq_len=8) == []


def test_partial_rotary_matches_gpt_neox_and_interleaved_matches_gpt_j():
    """lmspec's rotation of q against transformers' own functions: GPT-NeoX rotates the first
    dims of each head in the half layout, GPT-J every other pair of them (rotate_every_two)."""
    pytest.importorskip("transformers")
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_rope
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_rope
    from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions

    from lmspec.compiler.modules.positions import Rotary, apply_rope, rope_cos_sin

    torch.manual_seed(0)
    B, T, H, hd, dims = 2, 7, 3, 16, 4
    q = torch.randn(B, T, H, hd)
    positions = torch.arange(T)[None]
    rotary = Rotary(dims, 10_000.0)
    cos, sin = rope_cos_sin(positions, rotary, torch.float32)
    ours = apply_rope(q, cos, sin, rotary)
    theirs, _ = neox_rope(q.transpose(1, 2), q.transpose(1, 2), cos[:, :, 0], sin[:, :, 0])
    torch.testing.assert_close(ours, theirs.transpose(1, 2))
    assert torch.equal(ours[..., dims:], q[..., dims:])  # the rest passes through

    interleaved = Rotary(dims, 10_000.0, interleaved=True)
    cos, sin = rope_cos_sin(positions, interleaved, torch.float32)
    table = create_sinusoidal_positions(T, dims)[positions]  # GPT-J: sin then cos, dims / 2 each
    gj_sin, gj_cos = torch.split(table, dims // 2, dim=-1)
    expected = torch.cat((gptj_rope(q[..., :dims], gj_sin, gj_cos), q[..., dims:]), dim=-1)
    torch.testing.assert_close(apply_rope(q, cos, sin, interleaved), expected)


def test_llama3_scaling_matches_transformers_frequencies():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lmspec.compiler.modules.positions import Rotary, rope_inv_freq

    config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=64,
                                      rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0,
                                                       "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 64})
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = rope_inv_freq(Rotary(128, 500_000.0, scaling=("llama3", 8.0, 1.0, 4.0, 64)))
    assert torch.equal(ours, theirs)
    plain = rope_inv_freq(Rotary(128, 500_000.0))
    assert (ours == plain).any() and (ours == plain / 8).any() and ((ours != plain) & (ours != plain / 8)).any()


@pytest.mark.parametrize("position", ["rope(fraction: 25%)", "rope(layout: interleaved, scaling: linear(factor: 2))"])
def test_cached_decoding_agrees_with_a_full_forward(position):
    torch.manual_seed(0)
    model = build_model(arch_of(f"position: {position}, qk_norm: true")).eval()
    ids = torch.randint(0, 101, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 10)
        first = model(ids[:, :6], cache=cache).logits
        rest = torch.cat([model(ids[:, i : i + 1], cache=cache).logits for i in range(6, 10)], dim=1)
    torch.testing.assert_close(torch.cat((first, rest), dim=1), full, atol=1e-5, rtol=0)


def test_a_fraction_that_leaves_an_odd_number_of_dimensions_is_lms062():
    (d,) = errors_of("position: rope(fraction: 30%)")  # 30% of head_dim 8 is 2.4
    assert d.code == "LMS062" and "30% of head_dim 8 is 2.4, not an even number" in d.message
    assert d.help == "try `fraction: 25%` (2 dimensions)"
    assert errors_of("position: rope(fraction: 25%)", "vocab: 101, context: 32, layers: 2, d_model: 40, heads: 4") \
        and not errors_of("position: rope(fraction: 20%)", "vocab: 101, context: 32, layers: 2, d_model: 40, heads: 4")
    # a partial rotation needs an even number of rotated dimensions, not an even head_dim
    assert not errors_of("position: rope(fraction: 40%), head_dim: 5")  # 2 of the 5 dimensions rotate
    assert not errors_of("position: rope(fraction: 40%)", "vocab: 101, context: 32, layers: 2, d_model: 20, heads: 4")
    # the help's fraction, written as it prints, passes (28 of head_dim 96: 0.291667)
    wide = "vocab: 101, context: 32, layers: 2, d_model: 384, heads: 4"
    (d,) = errors_of("position: rope(fraction: 30%)", wide)
    suggested = d.help.split("`")[1]
    assert suggested == "fraction: 0.291667" and not errors_of(f"position: rope({suggested})", wide)


def test_llama3_scaling_needs_high_freq_above_low_freq():
    (d,) = errors_of("position: rope(scaling: llama3(low_freq: 4, high_freq: 4))")
    assert d.code == "LMS130" and "high_freq above low_freq" in d.message and "Llama 3.1 uses" in d.help
    (d,) = errors_of("layer 1 { position: rope(scaling: llama3(high_freq: 0.5)) }")
    assert d.code == "LMS130"
    assert not errors_of("position: rope(scaling: llama3)")


def test_linear_scaling_needs_its_factor():
    (d,) = errors_of("position: rope(scaling: linear)")
    assert d.code == "LMS046" and "factor" in d.message


# ---- parallel attention + MLP -----------------------------------------------------------------------


@pytest.mark.parametrize("keys", [
    "residual: parallel",
    "residual: parallel(norms: 2)",
    "residual: parallel, position: rope(fraction: 25%, layout: interleaved), bias: false, mlp_bias: true, "
    "head: lm(bias: true)",  # GPT-J's shape
    "residual: parallel, qk_norm: true, position: rope(fraction: 40%), head_dim: 10",  # Phi's
])
def test_parallel_layers_count_build_and_round_trip(keys):
    arch = arch_of(keys)
    assert_counts_match_the_built_model(arch)
    assert_flops_match_the_counter(arch)
    assert_spec_round_trips(arch)
    assert meta_check(arch, seq_len=8) == []


def test_one_shared_norm_drops_the_mlp_norm():
    sequential, shared, two = arch_of(""), arch_of("residual: parallel"), arch_of("residual: parallel(norms: 2)")
    assert count_parameters(sequential).total - count_parameters(shared).total == 2 * 2 * 32  # a LayerNorm a layer
    assert count_parameters(two).total == count_parameters(sequential).total
    assert build_model(shared, device="meta").decoder.layers[0].mlp_norm is None


@pytest.mark.parametrize("norms", [1, 2])
def test_a_parallel_layer_adds_both_branches_to_its_input(norms):
    from lmspec.compiler.modules import AttentionContext

    torch.manual_seed(0)
    block = build_model(arch_of(f"residual: parallel(norms: {norms})")).decoder.layers[0].eval()
    x = torch.randn(2, 5, 32)
    ctx = AttentionContext(q_pos=torch.arange(5)[None], k_pos=torch.arange(5)[None], start=0, key_mask=None,
                           prefix_lengths=None, relative_bias=None, memory_mask=None, dtype=x.dtype)
    mlp_in = block.attn_norm(x) if norms == 1 else block.mlp_norm(x)
    with torch.no_grad():
        expected = x + block.attn(block.attn_norm(x), ctx) + block.mlp(mlp_in)
        torch.testing.assert_close(block(x, ctx), expected)


def test_a_parallel_residual_needs_pre_norm_and_no_cross_attention():
    (d,) = errors_of("residual: parallel, placement: post")
    assert d.code == "LMS131" and "placement: post" in d.message and d.labels[0].message == "post-norm set here"
    report = check_text(f"{HEADER}model s {{ arch: encoder_decoder, vocab: 101, context: 32, d_model: 32, heads: 4, "
                        "residual: parallel, encoder { layers: 1 }, decoder { layers: 1 } }\n", "features.lmspec")
    assert [d.code for d in report.errors] == ["LMS131"] and "cross-attention" in report.errors[0].message
    (d,) = errors_of("residual: parallel(norms: 3)")
    assert d.code == "LMS043"


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("keys", [
    "heads: 4, residual: parallel",
    "heads: 4, residual: parallel(norms: 2), norm: rmsnorm, position: rope(fraction: 25%)",
    "heads: 4, residual: parallel, activation: swiglu, dropout: 0.1",
    "heads: 4, position: rope(fraction: 50%, layout: interleaved, scaling: llama3(original_context: 8))",
])
def test_parallel_and_rope_activation_estimate_matches_saved_tensors(keys, precision):
    from tests.test_analysis import cpu_activation_estimate, saved_tensor_bytes

    arch = load_arch(f"{HEADER}model m {{ vocab: 101, context: 32, layers: 2, d_model: 32, {keys} }}\n", "m")
    model = build_model(arch).train()
    measured = saved_tensor_bytes(model, arch, 2, 16, 16, autocast=precision == "bf16")
    assert cpu_activation_estimate(arch, 2, 16, 16, precision) == measured


def test_a_parallel_model_is_refused_by_the_exported_families():
    from lmspec.compiler.hf import HFExportError, export_family

    with pytest.raises(HFExportError) as info:
        export_family(arch_of("residual: parallel, position: rope, norm: rmsnorm, activation: swiglu, bias: false"))
    assert "residual: parallel (llama has sequential: attention, then the MLP)" in info.value.gaps


# ---- LayerNorm without bias -------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [
    "norm_bias: false",
    "norm_bias: false, qk_norm: true, embed_norm: true, residual: parallel(norms: 2)",
    "norm_bias: false, norm: rmsnorm, layer 1 { norm: layernorm }",
])
def test_layernorm_without_bias_counts_build_and_round_trips(keys):
    arch = arch_of(keys)
    assert_counts_match_the_built_model(arch)
    text = assert_spec_round_trips(arch)
    assert "  norm_bias: false\n" in text
    model = build_model(arch, device="meta")
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_every_layernorm_loses_its_bias():
    arch = load_arch(f"""{HEADER}model bert {{
  arch: encoder, vocab: 101, context: 32, layers: 2, d_model: 32, heads: 4, placement: post, embed_norm: true,
  norm_bias: false, head: mlm(transform: true)
}}
""", "bert")
    with_bias = load_arch(f"""{HEADER}model bert {{
  arch: encoder, vocab: 101, context: 32, layers: 2, d_model: 32, heads: 4, placement: post, embed_norm: true,
  head: mlm(transform: true)
}}
""", "bert")
    # two norms a layer, the embedding's and the MLM transform's: 6 biases of d_model
    assert count_parameters(with_bias).total - count_parameters(arch).total == 6 * 32
    assert_counts_match_the_built_model(arch)


def test_norm_bias_false_without_a_layernorm_is_lms132():
    (d,) = errors_of("norm: rmsnorm, norm_bias: false")
    assert d.code == "LMS132" and "RMSNorms" in d.message and "norm: layernorm" in d.help
    assert not errors_of("norm: layernorm, norm_bias: false")


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_layernorm_without_bias_keeps_what_a_layernorm_keeps(precision):
    from tests.test_analysis import cpu_activation_estimate, saved_tensor_bytes

    arch = arch_of("norm_bias: false, qk_norm: true")
    measured = saved_tensor_bytes(build_model(arch).train(), arch, 2, 16, 16, autocast=precision == "bf16")
    assert cpu_activation_estimate(arch, 2, 16, 16, precision) == measured


def test_gpt2_export_refuses_layernorm_without_bias():
    from lmspec.compiler.hf import HFExportError, export_family

    with pytest.raises(HFExportError) as info:
        export_family(arch_of("norm_bias: false, activation: gelu_tanh, tie_embeddings: true"))
    assert info.value.family == "gpt2"
    assert "norm_bias: false (gpt2 has true: LayerNorms with a bias)" in info.value.gaps


def test_a_projection_bias_reads_its_default_from_bias():
    """`qkv_bias` left out is `bias`: an expression can read it, from the same block (a layer
    override) or from another model."""
    from lmspec.compiler.api import check_text

    report = check_text("""lmspec 1
model a { vocab: 300, context: 32, layers: 2, d_model: 32, heads: 4, bias: false }
model b { vocab: 300, context: 32, layers: 2, d_model: 32, heads: 4, qkv_bias: a.qkv_bias }
model c { vocab: 300, context: 32, layers: 2, d_model: 32, heads: 4, bias: false, layer 0 { mlp_bias: out_bias } }
""")
    assert report.ok, [d.message for d in report.diagnostics]
    assert report.spec.blocks["b"].qkv_bias is False
    assert report.spec.blocks["c"].layer[0].mlp_bias is False
