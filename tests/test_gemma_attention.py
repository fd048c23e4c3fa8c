"""Gemma 2's attention details as language keys: `attention_scale: <number>`, `attention_softcap`
(model, stack and layer) and `lm(softcap)`. Each from a spec snippet to what it computes,
against the formula written out by hand (with and without padding, and through greedy
generation with the KV cache); the diagnostics for values the model cannot honour; and what
the analysis counts: the same parameters, and the score matrices a capped layer keeps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lmspec.compiler.analysis import count_parameters, flops_per_token
from lmspec.compiler.analysis.memory import training_memory
from lmspec.compiler.api import check_text, load_arch
from lmspec.compiler.build import build_attention, build_model
from lmspec.compiler.hf import spec_from_arch
from lmspec.compiler.modules.masks import AttentionContext

HEADER = "lmspec 1\n"
# no positions: the reference below needs none, and padding then changes no position
BASE = "vocab: 101, context: 32, layers: 2, d_model: 32, heads: 4, kv_heads: 2, position: none"
LEARNED = BASE.replace("position: none", "position: learned")


def arch_of(keys: str, base: str = BASE):
    return load_arch(f"{HEADER}model m {{ {base}, {keys} }}\n", "m")


def errors_of(keys: str, base: str = BASE) -> list:
    report = check_text(f"{HEADER}model m {{ {base}, {keys} }}\n", "gemma.lmspec")
    return [d for d in report.diagnostics if d.is_error]


def model_of(keys: str, seed: int = 0, std: float = 0.3):
    """A built model with weights large enough that scores and logits reach the caps."""
    torch.manual_seed(seed)
    model = build_model(arch_of(keys)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return model


# ---- the reference: the formulas, written out ------------------------------------------------


def reference_attention(attn, x: torch.Tensor, key_mask: torch.Tensor | None, scale: float, cap: float | None):
    """softmax(cap * tanh(q k^T * scale / cap) + causal and padding mask) v, head by head."""
    B, T, _ = x.shape
    H, KV, hd = attn.heads, attn.kv_heads, attn.head_dim
    q, k, v = attn.qkv_proj(x).split((H * hd, KV * hd, KV * hd), dim=-1)
    out = []
    for h in range(H):
        g = h // (H // KV)  # the kv head this query head reads
        qh, kh, vh = q[..., h * hd:(h + 1) * hd], k[..., g * hd:(g + 1) * hd], v[..., g * hd:(g + 1) * hd]
        s = qh @ kh.transpose(1, 2) * scale  # (B, T, T)
        if cap is not None:
            s = cap * torch.tanh(s / cap)
        visible = torch.ones(T, T, dtype=torch.bool).tril()[None]
        if key_mask is not None:  # a padding key is seen by no query but itself
            visible = visible & (key_mask[:, None, :] | torch.eye(T, dtype=torch.bool)[None])
        out.append(s.masked_fill(~visible, float("-inf")).softmax(-1) @ vh)
    return attn.o_proj(torch.cat(out, dim=-1))


def reference_logits(model, ids: torch.Tensor, key_mask: torch.Tensor | None, scale: float,
                     caps: list[float | None], lm_cap: float | None) -> torch.Tensor:
    """The whole pre-norm decoder with `reference_attention` in every layer."""
    x = model.embed(ids)
    for block, cap in zip(model.decoder.layers, caps):
        x = x + reference_attention(block.attn, block.attn_norm(x), key_mask, scale, cap)
        x = x + block.mlp(block.mlp_norm(x))
    logits = F.linear(model.decoder.final_norm(x), model.lm_head.weight, model.lm_head.bias)
    return logits if lm_cap is None else lm_cap * torch.tanh(logits / lm_cap)


CASES = {
    "scale": ("attention_scale: 1 / 12", 1 / 12, [None, None], None),
    "softcap": ("attention_softcap: 0.5", 8 ** -0.5, [0.5, 0.5], None),
    "softcap-per-layer": ("attention_softcap: 0.5, layer 1 { attention_softcap: 2 }", 8 ** -0.5, [0.5, 2.0], None),
    "lm-softcap": ("head: lm(softcap: 3)", 8 ** -0.5, [None, None], 3.0),
    "gemma2": ("attention_scale: 1 / 12, attention_softcap: 0.5, head: lm(softcap: 3)", 1 / 12, [0.5, 0.5], 3.0),
}


@pytest.mark.parametrize("case", CASES)
def test_each_feature_computes_its_formula_with_and_without_padding(case):
    keys, scale, caps, lm_cap = CASES[case]
    model = model_of(keys)
    ids = torch.randint(0, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False  # row 1 is left-padded
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.allclose(plain, reference_logits(model, ids, None, scale, caps, lm_cap), atol=1e-5)
        padded = model(ids, attention_mask=mask).logits
        expected = reference_logits(model, ids, mask, scale, caps, lm_cap)
        assert torch.allclose(padded[mask], expected[mask], atol=1e-5)
        # ... and the feature matters: the reference without it is far off
        uncapped = reference_logits(model, ids, None, 8 ** -0.5, [None, None], None)
    assert (plain - uncapped).abs().max() > 1e-2
    if lm_cap is not None:
        assert plain.abs().max() < lm_cap


def test_lm_softcap_bounds_the_logits_every_reader_sees():
    model = model_of("head: lm(softcap: 3)", std=1.0)
    ids = torch.randint(0, 101, (2, 6))
    with torch.no_grad():
        out = model(ids)
        hidden_logits = F.linear(out.hidden, model.lm_head.weight)
        assert hidden_logits.abs().max() > 3  # without the cap they would pass it
        assert torch.allclose(out.logits, 3 * torch.tanh(hidden_logits / 3), atol=1e-6)
        assert torch.equal(model(ids, logits_to_keep=1).logits[:, -1], out.logits[:, -1])
    assert "softcap=3" in repr(model.lm_head)


def greedy_by_recomputation(model, ids: torch.Tensor, mask: torch.Tensor | None, steps: int) -> torch.Tensor:
    for _ in range(steps):
        logits = model(ids, attention_mask=mask).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=torch.bool)], dim=1)
    return ids


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_greedy_generation_with_the_cache_equals_recomputation(padded):
    # a sliding-window layer too: its cache is a ring buffer once generation passes the window
    model = model_of("attention_scale: 1 / 12, attention_softcap: 0.5, head: lm(softcap: 3), "
                     "layer 1 { attention: sliding(window: 4), attention_softcap: 2 }", std=0.5)
    ids = torch.randint(0, 101, (2, 5))
    mask = None
    if padded:
        mask = torch.ones(2, 5, dtype=torch.bool)
        mask[0, :2] = False
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, temperature=0, attention_mask=mask)
        assert torch.equal(cached, greedy_by_recomputation(model, ids, mask, 8))
        # one step at a time through the cache gives the logits of the full pass
        cache = model.new_cache(2, 13)
        step = [model(cached[:, :5], attention_mask=mask, cache=cache).logits[:, -1]]
        full_mask = None if mask is None else torch.cat([mask, torch.ones(2, 7, dtype=torch.bool)], dim=1)
        for t in range(5, 12):
            step.append(model(cached[:, t:t + 1], attention_mask=full_mask[:, :t + 1] if padded else None,
                              cache=cache).logits[:, -1])
        full = model(cached[:, :12], attention_mask=full_mask).logits[:, 4:12]
    assert torch.allclose(torch.stack(step, dim=1), full, atol=1e-5)


def test_training_backward_through_the_capped_path_has_gradients():
    model = model_of("attention_softcap: 0.5, attention: causal, dropout: 0.1, head: lm(softcap: 3)").train()
    ids = torch.randint(0, 101, (2, 7))
    loss = F.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_cross_attention_is_capped_too():
    arch = load_arch(f"{HEADER}model m {{ arch: encoder_decoder, vocab: 101, context: 16, d_model: 16, heads: 2, "
                     "position: none, attention_softcap: 0.5, encoder { layers: 1 }, decoder { layers: 1 } }\n", "m")
    model = build_model(arch)
    assert model.decoder.layers[0].cross_attn.softcap == 0.5 == model.encoder.layers[0].attn.softcap


def test_one_layer_equals_transformers_gemma2_attention():
    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma2 import modeling_gemma2 as G

    config = transformers.Gemma2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       query_pre_attn_scalar=144, attn_logit_softcapping=0.5, rope_theta=10_000.0,
                                       num_hidden_layers=1, intermediate_size=64, vocab_size=101,
                                       layer_types=["full_attention"])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    theirs = G.Gemma2Attention(config, 0).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    arch = arch_of("attention_scale: 1 / 12, attention_softcap: 0.5, head_dim: 8, position: rope(theta: 10_000), "
                   "bias: false", base=LEARNED.replace(", position: learned", ""))
    ours = build_attention(arch.decoder.layers[0]).eval()
    with torch.no_grad():
        ours.qkv_proj.weight.copy_(torch.cat([theirs.q_proj.weight, theirs.k_proj.weight, theirs.v_proj.weight]))
        ours.o_proj.weight.copy_(theirs.o_proj.weight)
        x = torch.randn(2, 7, 32)
        pos = torch.arange(7)[None]
        cos, sin = G.Gemma2RotaryEmbedding(config)(x, pos)
        causal = torch.full((7, 7), float("-inf")).triu(1)[None, None]
        expected = theirs(x, (cos, sin), causal)[0]
        ctx = AttentionContext(q_pos=pos, k_pos=pos, start=0, key_mask=None, prefix_lengths=None, relative_bias=None,
                               memory_mask=None, dtype=x.dtype)
        assert torch.allclose(ours(x, ctx), expected, atol=1e-5)


@pytest.mark.parametrize("T, causal", [(64, True), (100, False)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_capped_attention_is_transformers_eager_gemma2_bit_for_bit(T, causal, seed):
    """In bf16 the probabilities are an fp32 softmax cast back, as transformers computes them; a
    bf16 softmax rounds a few of them differently (on torch 2.13's CPU kernels: seeds 1 and 2
    of the rows of 100 keys)."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from lmspec.compiler.modules.attention import attend
    from lmspec.compiler.modules.masks import AttentionMask

    torch.manual_seed(seed)
    q = (3 * torch.randn(1, 4, T, 16)).bfloat16()
    k, v = ((3 * torch.randn(1, 2, T, 16)).bfloat16() for _ in range(2))
    module = SimpleNamespace(num_key_value_groups=2, head_dim=16, training=False)
    mask = torch.full((T, T), float("-inf"), dtype=torch.bfloat16).triu(1)[None, None] if causal else None
    theirs, _ = eager_attention_forward(module, q, k, v, mask, scaling=1 / 12, softcap=0.5)  # (B, T, nh, hd)
    ours = attend(q, k, v, AttentionMask(is_causal=causal), dropout=0.0, scale=1 / 12, softcap=0.5)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours.transpose(1, 2), theirs)


# ---- the language: values, diagnostics, round trips --------------------------------------------


def test_the_keys_lower_to_the_architecture():
    arch = arch_of("attention_scale: 1 / 12, attention_softcap: 50, head: lm(softcap: 30), "
                   "layer 1 { attention_softcap: 20 }")
    assert [L.attention.scale for L in arch.decoder.layers] == [1 / 12, 1 / 12]
    assert [L.attention.softcap for L in arch.decoder.layers] == [50.0, 20.0]
    assert arch.head("lm").softcap == 30.0
    assert arch_of("").decoder.layers[0].attention.softcap is None and arch_of("").head("lm").softcap is None
    assert arch_of("attention_scale: none").decoder.layers[0].attention.scale == "none"


def test_the_imported_spec_writes_the_keys_back():
    arch = arch_of("attention_scale: 1 / 12, attention_softcap: 50, head: lm(softcap: 30), "
                   "layer 1 { attention_softcap: 20 }")
    text = spec_from_arch(arch)
    assert "attention_scale: 0.08333333333333333" in text and "head: lm(softcap: 30)" in text
    assert load_arch(text, "m") == arch
    # a cap on some layers only: uncapped is the common value, the capped layers override it
    layers = arch.decoder.layers
    some = replace(arch, decoder=replace(arch.decoder, layers=(
        replace(layers[0], attention=replace(layers[0].attention, softcap=None)), layers[1])))
    text = spec_from_arch(some)
    assert "  attention_softcap" not in text and "layer 1 { attention_softcap: 20 }" in text
    assert load_arch(text, "m") == some


@pytest.mark.parametrize("keys, code, at, message", [
    ("attention_softcap: 0", "LMS043", "0", "'attention_softcap' must be > 0, found 0"),
    ("attention_scale: -0.5", "LMS043", "-0.5", "'attention_scale' must be > 0, found -0.5"),
    ("attention_scale: inverse_sqr", "LMS044", "inverse_sqr", "unknown attention_scale 'inverse_sqr'"),
    ("attention_scale: true", "LMS042", "true", "'attention_scale' must be one of inverse_sqrt, none or a number"),
    ("head: lm(softcap: -1)", "LMS043", "-1", "'softcap' must be > 0, found -1"),
    ("layer 1 { attention_softcap: 0 }", "LMS043", "0 }", "'attention_softcap' must be > 0, found 0"),
])  # fmt: skip
def test_check_rejects_bad_values_where_they_are(keys, code, at, message):
    errors = errors_of(keys)
    assert [d.code for d in errors] == [code]
    line = f"model m {{ {BASE}, {keys} }}"
    span = errors[0].span
    assert (span.file, span.line, span.col) == ("gemma.lmspec", 2, line.rindex(at) + 1)
    assert errors[0].message.startswith(message) and errors[0].help


def test_none_below_a_cap_is_an_error_not_an_uncapped_layer():
    errors = errors_of("attention_softcap: 50, layer 1 { attention_softcap: none }")
    assert [d.code for d in errors] == ["LMS116"]
    d = errors[0]
    line = f"model m {{ {BASE}, attention_softcap: 50, layer 1 {{ attention_softcap: none }} }}"
    assert (d.span.file, d.span.line, d.span.col) == ("gemma.lmspec", 2, line.rindex("none") + 1)
    assert "keep the cap of 50 set above" in d.message and "leave it unset on the model" in d.help
    assert d.labels[0].message == "attention_softcap: 50"
    assert errors_of("layer 1 { attention_softcap: none }") == []  # no cap above: nothing to remove


def test_none_in_a_stack_block_below_the_model_cap_is_an_error():
    text = (f"{HEADER}model m {{\n  arch: encoder_decoder, vocab: 101, context: 16, d_model: 16, heads: 2\n"
            "  attention_softcap: 50\n  encoder { layers: 1, attention_softcap: none }\n"
            "  decoder { layers: 2, attention_softcap: 30, layer 0 { attention_softcap: none } }\n}\n")
    errors = [d for d in check_text(text, "s.lmspec").diagnostics if d.is_error]
    assert [(d.code, d.span.line) for d in errors] == [("LMS116", 5), ("LMS116", 6)]
    assert "cap of 30" in errors[1].message


# ---- the analysis -------------------------------------------------------------------------------


def test_the_parameters_and_flops_are_unchanged():
    plain, capped = arch_of(""), arch_of("attention_scale: 1 / 12, attention_softcap: 50, head: lm(softcap: 30)")
    assert count_parameters(plain).total == count_parameters(capped).total == sum(
        p.numel() for p in build_model(capped, device="meta").parameters())
    assert flops_per_token(plain, 16).forward == flops_per_token(capped, 16).forward


def test_the_memory_estimate_counts_the_score_matrices_of_capped_layers():
    plain = arch_of("")
    one = arch_of("layer 1 { attention_softcap: 50 }")
    both = arch_of("attention_softcap: 50")
    B, T = 2, 32

    def activations(arch, device="cpu"):
        return training_memory(arch, batch=B, seq_len=T, device=device).activations

    for device in ("cpu", "cuda"):
        assert activations(plain, device) < activations(one, device) < activations(both, device)
    # tanh's output and the probabilities: 2 x (B, heads, T, T) fp32 per capped layer, at least
    assert activations(one) - activations(plain) >= 2 * 4 * B * 4 * T * T
    head = arch_of("head: lm(softcap: 30)")
    assert activations(head) - activations(plain) == 4 * B * T * 101  # tanh's output over the vocabulary


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("keys", [
    "heads: 4, kv_heads: 2, attention_softcap: 50, head: lm(softcap: 30)",
    "heads: 1, attention_softcap: 50, dropout: 0.1",  # one head: q, k and v reach the matmuls as views
    "heads: 4, kv_heads: 2, position: rope, qk_norm: true, norm: rmsnorm, attention_softcap: 50, "
    "layer 1 { attention: sliding(window: 8) }",
    "heads: 4, position: alibi, attention: prefix, attention_softcap: 50",
    "heads: 1, position: rope, qk_norm: true, norm: layernorm, attention_softcap: 50",  # q and k: new tensors
])  # fmt: skip
def test_the_memory_estimate_matches_what_autograd_keeps(keys, precision):
    from tests.test_analysis import cpu_activation_estimate, saved_tensor_bytes

    arch = arch_of(keys, base="vocab: 101, context: 32, layers: 2, d_model: 32")
    model = build_model(arch).train()
    measured = saved_tensor_bytes(model, arch, 2, 32, 32, autocast=precision == "bf16")
    assert cpu_activation_estimate(arch, 2, 32, 32, precision) == pytest.approx(measured, rel=0.01)
