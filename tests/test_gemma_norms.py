"""Gemma 2 and 3's norm details as language keys: `placement: sandwich` (a norm before and after
each sublayer, inside the residual) and `norm_offset` (every norm scales by offset + weight, its
weight starting at 1 - offset; Gemma's RMSNorm is offset 1). From a spec snippet to the model it
builds, what `check` counts and draws, and the Gemma import that now loads its weights as they are."""

from __future__ import annotations

import pytest
import torch

from lmspec.compiler.analysis import count_parameters, flops_per_token, parameter_shapes
from lmspec.compiler.analysis.meta import _inputs, _ScalarsOnMeta
from lmspec.compiler.api import check_text, load_arch
from lmspec.compiler.build import build_model
from lmspec.compiler.graphs import architecture_graph
from lmspec.compiler.hf import spec_from_arch
from lmspec.diagnostics import render_text

HEADER = "lmspec 1\n"
BASE = "vocab: 101, context: 32, layers: 2, d_model: 32, heads: 4"


def arch_of(keys: str, base: str = BASE):
    return load_arch(f"{HEADER}model m {{ {base}, {keys} }}\n", "m")


def ids(T: int = 10) -> torch.Tensor:
    return torch.randint(0, 100, (2, T), generator=torch.Generator().manual_seed(3))


# ---- placement: sandwich ------------------------------------------------------------------------


def rms(norm, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm by hand: x / sqrt(mean(x^2) + eps) * weight."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * norm.weight


def test_a_sandwich_block_normalises_each_sublayer_before_and_after_it():
    """h = x + post_attn(attn(pre_attn(x))); out = h + post_mlp(mlp(pre_mlp(h))), as Gemma 2's
    decoder layer (input_layernorm, post_attention_layernorm, pre_ and post_feedforward_layernorm)."""
    torch.manual_seed(0)
    model = build_model(arch_of("placement: sandwich, norm: rmsnorm, position: rope, activation: geglu_tanh"))
    with torch.no_grad():  # off their init, so that a norm left out or swapped would show
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((m, args, out))) for b in model.decoder.layers]
    with torch.no_grad():
        model(ids())
        for block, (x, ctx, *_), out in seen:
            h = x + rms(block.attn_post_norm, block.attn(rms(block.attn_norm, x), ctx))
            expected = h + rms(block.mlp_post_norm, block.mlp(rms(block.mlp_norm, h)))
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2


@pytest.mark.parametrize(("keys", "per_layer"), [
    ("norm: rmsnorm", 2 * 32),  # two more weights of d_model each
    ("norm: layernorm", 2 * 2 * 32),  # and their biases
    ("norm: layernorm, norm_bias: false, qk_norm: true", 2 * 32),  # qk-norms are not doubled
])
def test_sandwich_adds_exactly_two_norms_per_layer(keys, per_layer):
    pre, sandwich = arch_of(keys), arch_of(f"{keys}, placement: sandwich")
    assert count_parameters(sandwich).total - count_parameters(pre).total == 2 * per_layer
    model = build_model(sandwich, device="meta")
    assert {p.name: p.shape for p in parameter_shapes(sandwich)} == {n: tuple(p.shape) for n, p in
                                                                     model.named_parameters()}
    assert sandwich.decoder.final_norm  # the residual stream is never normalised: the stack ends with a norm


def test_sandwich_in_an_encoder_decoder_normalises_the_cross_attention_too():
    base = "arch: encoder_decoder, vocab: 101, context: 32, d_model: 32, heads: 4, norm: rmsnorm, position: none"
    stacks = "encoder { layers: 1 }, decoder { layers: 2 }"
    pre, sandwich = arch_of(stacks, base), arch_of(f"placement: sandwich, {stacks}", base)
    # 2 more norms in the encoder layer, 3 in each decoder layer (self-attention, cross-attention, MLP)
    assert count_parameters(sandwich).total - count_parameters(pre).total == (2 + 3 * 2) * 32
    model = build_model(sandwich, device="meta")
    assert {p.name: p.shape for p in parameter_shapes(sandwich)} == {n: tuple(p.shape) for n, p in
                                                                     model.named_parameters()}
    assert model.decoder.layers[0].cross_post_norm is not None and model.encoder.layers[0].cross_post_norm is None


def test_sandwich_norms_cost_no_matmul_flops():
    arch = arch_of("placement: sandwich, norm: rmsnorm, position: rope")
    from torch.utils.flop_counter import FlopCounterMode

    with _ScalarsOnMeta(), FlopCounterMode(display=False) as counter:
        build_model(arch, device="meta")(**_inputs(arch, 2, 16, 16))
    assert 2 * flops_per_token(arch, 16).forward_per_sequence == counter.get_total_flops()
    assert flops_per_token(arch, 16).forward == flops_per_token(arch_of("norm: rmsnorm, position: rope"), 16).forward


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # rms_norm under autocast
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("keys", [
    "placement: sandwich",  # autocast: a LayerNorm keeps the half branch output, an RMSNorm its fp32 copy
    "placement: sandwich, norm: rmsnorm, position: rope, activation: swiglu, qk_norm: true",
    "placement: sandwich, norm: rmsnorm, dropout: 0.1",
    "placement: sandwich, dropout: 0.1, qk_norm: true, norm_offset: 1",  # each norm keeps offset + weight
    "norm: rmsnorm, residual: parallel, norm_offset: 1",
    "arch: encoder, embed_norm: true, placement: post, head: mlm(transform: true), norm_offset: 0.5",
    "arch: encoder_decoder, norm: rmsnorm, position: none, placement: sandwich, norm_offset: 1, "
    "encoder { layers: 1 }, decoder { layers: 2 }",
])
def test_sandwich_and_offset_activation_estimates_match_saved_tensors(keys, precision):
    from tests.test_analysis import cpu_activation_estimate, saved_tensor_bytes

    base = BASE if "arch: encoder_decoder" not in keys else BASE.replace(" layers: 2,", "")
    arch = arch_of(keys, base)
    T_dec = 12 if arch.arch == "encoder_decoder" else 16
    model = build_model(arch).train()
    measured = saved_tensor_bytes(model, arch, 2, 16, T_dec, autocast=precision == "bf16")
    assert cpu_activation_estimate(arch, 2, 16, T_dec, precision) == measured


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("keys", ["placement: sandwich",
                                  "norm: rmsnorm, norm_offset: 1, placement: sandwich, qk_norm: true"])
def test_sandwich_and_offset_checkpointed_estimates_match_the_measured_peak(keys, precision):
    from test_parallel_check import _estimate, peak_activation_bytes

    arch = arch_of(keys)
    measured = peak_activation_bytes(arch, 2, 32, 32, checkpoint=True, autocast=precision == "bf16")
    assert _estimate(arch, 2, 32, 32, precision, True) == measured


def test_a_sandwich_decoder_decodes_with_its_kv_cache_as_it_reads_the_whole_sequence():
    torch.manual_seed(0)
    model = build_model(arch_of("placement: sandwich, norm: rmsnorm, position: rope, norm_offset: 1")).eval()
    x = ids(8)
    with torch.no_grad():
        whole = model(x).logits
        cache = model.new_cache(2)
        steps = [model(x[:, :5], cache=cache).logits] + [model(x[:, t:t + 1], cache=cache).logits for t in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_the_graph_draws_the_norm_after_each_sublayer():
    report = check_text(f"{HEADER}model m {{ {BASE},\n  placement: sandwich }}\n", "sandwich.lmspec")
    g = architecture_graph(report.models["m"], report.spec)
    for i in range(2):
        p = f"decoder.{i}"
        assert list(g.successors(f"{p}.attn")) == [f"{p}.attn_post_norm"]
        assert list(g.successors(f"{p}.mlp")) == [f"{p}.mlp_post_norm"]
        # the residual is added at the post norm: the dashed edge carries x past the sublayer to it
        residual = [src for src, _, data in g.in_edges(f"{p}.mlp_post_norm", data=True) if data.get("residual")]
        assert residual == [f"{p}.attn_post_norm"]
        assert g.nodes[f"{p}.attn_post_norm"]["span"].line == 3  # drawn from `placement`
    assert list(g.successors("decoder.1.mlp_post_norm")) == ["decoder.final_norm"]


def test_lmspec_graph_prints_the_post_norms(tmp_path, capsys):
    from lmspec.compiler.graphs import graph_main

    path = tmp_path / "sandwich.lmspec"
    path.write_text(f"{HEADER}model m {{ {BASE}, norm: rmsnorm, placement: sandwich }}\n")
    assert graph_main([str(path), "--model", "m", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.count("rmsnorm (on the output)") == 4  # two a layer
    assert graph_main([str(path), "--model", "m"]) == 0
    assert '"decoder.1.mlp" -> "decoder.1.mlp_post_norm"' in capsys.readouterr().out


def test_a_parallel_residual_with_sandwich_is_refused_where_placement_is_written():
    text = f"{HEADER}model m {{ {BASE},\n  residual: parallel, placement: sandwich }}\n"
    report = check_text(text, "bad.lmspec")
    (d,) = report.errors
    assert d.code == "LMS118" and (d.span.file, d.span.line, d.span.col) == ("bad.lmspec", 3, 34)
    assert d.labels[0].message == "parallel residual set here"
    shown = render_text([d], report.sources, colour=False)
    assert shown.startswith("bad.lmspec:3:34: error[LMS118]: model 'm' has a parallel residual with placement: "
                            "sandwich") and "= help: use `placement: pre` with `residual: parallel(...)`" in shown


def test_weights_without_the_sandwich_norms_do_not_continue_into_a_sandwich_model():
    prelude = 'lmspec 1\ntokenizer tok { kind: bytes }\ndata text { source: builtin("tiny-stories") }\n'
    report = check_text(prelude + """model a { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
model b extends a { placement: sandwich }
model c extends a { norm_offset: 1 }
train t { model: a, objective: clm, data: text }
train u { model: c, init: t, objective: clm, data: text }
train v { model: b, init: t, objective: clm, data: text }
""", "t.lmspec")
    assert [(d.code, d.span.line) for d in report.errors] == [("LMS075", 9)]  # the same tensors load into c
    assert report.errors[0].message.endswith("(decoder layer 0 sandwich norms: false vs true)")


@pytest.mark.parametrize(("keys", "code"), [
    ("placement: sandwiched", "LMS044"),  # an unknown choice, with its did-you-mean
    ("norm_offset: true", "LMS042"),
    ("norm_offset: 100", "LMS043"),
])
def test_bad_values_are_diagnostics(keys, code):
    report = check_text(f"{HEADER}model m {{ {BASE}, {keys} }}\n", "bad.lmspec")
    assert [d.code for d in report.errors] == [code]
    assert report.errors[0].span.line == 2 and report.errors[0].help


# ---- norm_offset --------------------------------------------------------------------------------

# every kind of norm: the layers', the qk-norms, the final norm (decoder); the embedding norm and
# the mlm head transform's (encoder)
DECODER = "norm: rmsnorm, qk_norm: true, placement: sandwich, position: rope"
ENCODER = "arch: encoder, embed_norm: true, placement: post, head: mlm(transform: true)"


@pytest.mark.parametrize("keys", [DECODER, ENCODER, "norm: layernorm, qk_norm: true"])
def test_an_untrained_model_with_an_offset_is_the_model_without(keys):
    torch.manual_seed(0)
    plain = build_model(arch_of(keys)).eval()
    torch.manual_seed(0)
    offset = build_model(arch_of(f"{keys}, norm_offset: 1")).eval()
    norms = [m for m in offset.modules() if hasattr(m, "offset")]
    assert len(norms) == sum(isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) for m in plain.modules()) > 0
    assert all(m.offset == 1 and torch.equal(m.weight, torch.zeros_like(m.weight)) for m in norms)
    with torch.no_grad():
        torch.testing.assert_close(offset(ids()).logits, plain(ids()).logits, rtol=0, atol=0)


@pytest.mark.parametrize("keys", [DECODER, ENCODER])
def test_a_trained_weight_w_scales_as_offset_plus_w(keys):
    """offset 1 with weight w is the model without an offset with weight 1 + w, its gradients too."""
    torch.manual_seed(0)
    plain = build_model(arch_of(keys))
    offset = build_model(arch_of(f"{keys}, norm_offset: 1"))
    offset.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for (name, a), b in zip(plain.named_modules(), offset.modules()):
            if hasattr(b, "offset"):
                b.weight.normal_(0.0, 0.3)
                a.weight.copy_(1.0 + b.weight)
    x = ids()
    for model in (plain, offset):
        model.eval()
        model(x).logits.square().mean().backward()
    torch.testing.assert_close(offset(x).logits, plain(x).logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(plain.parameters(), offset.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_a_layernorm_offset_keeps_its_bias():
    norm = build_model(arch_of("norm_offset: 0.5")).decoder.layers[0].attn_norm
    assert norm.bias is not None and torch.equal(norm.weight, torch.full((32,), 0.5))
    x = torch.randn(3, 32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        by_hand = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(norm(x), by_hand * (0.5 + norm.weight) + norm.bias)


def test_sandwich_and_norm_offset_read_back_from_the_spec_import_writes():
    arch = arch_of(f"{DECODER}, norm_offset: 1")
    text = spec_from_arch(arch, comment="round trip")
    assert "  placement: sandwich\n" in text and "  norm_offset: 1.0\n" in text
    assert load_arch(text, "m") == arch
    assert "norm_offset" not in spec_from_arch(arch_of("norm: rmsnorm"))  # the default is not written


def test_an_offset_is_refused_by_the_exported_families():
    from lmspec.compiler.hf import HFExportError, export_family

    with pytest.raises(HFExportError) as info:
        export_family(arch_of("position: rope, norm: rmsnorm, activation: swiglu, bias: false, norm_offset: 1"))
    assert "norm_offset: 1.0 (llama has norms scaling by their weight: 0.0)" in info.value.gaps
    with pytest.raises(HFExportError) as info:
        export_family(arch_of("position: rope, norm: rmsnorm, activation: swiglu, bias: false, placement: sandwich"))
    assert any(gap.startswith("placement: sandwich") for gap in info.value.gaps), info.value.gaps


# ---- the Gemma import ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from hf_support import save_tiny

    config = transformers.GemmaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                      max_position_embeddings=64)
    return save_tiny(tmp_path_factory.mktemp("gemma"), "gemma", transformers.GemmaForCausalLM, config)


def test_gemma_loads_its_norm_weights_as_they_are_with_norm_offset_1(gemma):
    from hf_support import assert_imports_exactly, assert_logits_match, hf_model
    from safetensors.torch import load_file

    from lmspec.compiler.hf import load_hf_model, spec_from_hf

    arch, model = load_hf_model(gemma)
    assert arch.norm_offset == 1 and {L.norm_offset for L in arch.decoder.layers} == {1}
    hf = hf_model(gemma)
    checkpoint = load_file(str(gemma / "model.safetensors"))
    pairs = [(model.decoder.final_norm, "model.norm.weight")]
    for i in range(2):
        pairs += [(model.decoder.layers[i].attn_norm, f"model.layers.{i}.input_layernorm.weight"),
                  (model.decoder.layers[i].mlp_norm, f"model.layers.{i}.post_attention_layernorm.weight")]
    for ours, name in pairs:
        assert torch.equal(ours.weight, checkpoint[name]), name
    assert torch.equal(model.decoder.layers[0].attn_norm.weight, hf.model.layers[0].input_layernorm.weight)
    assert "  norm_offset: 1.0\n" in spec_from_hf(gemma, "g")
    assert_imports_exactly(gemma)
    assert_logits_match(gemma)


def test_sandwich_with_norm_offset_1_is_transformers_gemma2_decoder():
    """Gemma 2 with its soft caps off, local layers made global and q scaled by 1/sqrt(head_dim):
    what is left is Gemma's decoder with sandwich norms, which the spec below computes, weights
    copied by hand (the Gemma 2 import is for another day)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, query_pre_attn_scalar=16,
        attn_logit_softcapping=None, final_logit_softcapping=None, layer_types=["full_attention"] * 2)
    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(config).eval()
    arch = load_arch(f"""{HEADER}model g {{
  vocab: 100, context: 64, layers: 2, d_model: 32, heads: 4, kv_heads: 1, head_dim: 16, d_ff: 64
  norm: rmsnorm, norm_eps: 1e-6, norm_offset: 1, placement: sandwich, position: rope, activation: geglu_tanh
  bias: false, tie_embeddings: true, embed_scale: {32 ** 0.5!r} }}
""", "g")
    model = build_model(arch).eval()
    # lmspec's four norms of a layer, in the order they run, and Gemma 2's names for them
    norms = {"attn_norm": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
             "mlp_norm": "pre_feedforward_layernorm", "mlp_post_norm": "post_feedforward_layernorm"}
    with torch.no_grad():
        for p in hf.parameters():  # off their init: Gemma's norm weights start at zero
            p.add_(0.1 * torch.randn_like(p))
        model.embed.weight.copy_(hf.model.embed_tokens.weight)
        model.decoder.final_norm.weight.copy_(hf.model.norm.weight)
        for ours, theirs in zip(model.decoder.layers, hf.model.layers):
            a = theirs.self_attn
            ours.attn.qkv_proj.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            ours.attn.o_proj.weight.copy_(a.o_proj.weight)
            for name, hf_name in norms.items():
                getattr(ours, name).weight.copy_(getattr(theirs, hf_name).weight)
            for proj in ("gate_proj", "up_proj", "down_proj"):
                getattr(ours.mlp, proj).weight.copy_(getattr(theirs.mlp, proj).weight)
        torch.testing.assert_close(model(ids(12)).logits, hf(ids(12)).logits, atol=1e-5, rtol=0)
