"""The torch model built from an ArchConfig: shapes, masking, padding, GQA, weight tying,
meta builds, gradients, and the KV cache against full forward passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmspec.compiler.arch import (
    ArchConfig,
    AttentionConfig,
    HeadConfig,
    LayerConfig,
    PositionConfig,
    StackConfig,
)
from lmspec.compiler.build import build_model, check_buildable
from lmspec.compiler.modules import KVCache, ModelOutput, Transformer
from lmspec.compiler.modules.positions import alibi_slopes, relative_position_bucket, sinusoidal_positions

VOCAB = 61


def layer(
    *,
    d: int = 32,
    heads: int = 4,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    d_ff: int = 48,
    attention: str = "causal",
    window: int | None = None,
    scale: str = "inverse_sqrt",
    position: str = "learned",
    **kw,
) -> LayerConfig:
    return LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=kv_heads or heads,
        head_dim=head_dim or d // heads,
        d_ff=d_ff,
        attention=AttentionConfig(kind=attention, window=window, scale=scale),
        position=PositionConfig(kind=position),
        **kw,
    )


def make_arch(
    arch: str = "decoder",
    *,
    n_layers: int = 2,
    position: str = "learned",
    out_heads=(HeadConfig("lm"),),
    layers: list[LayerConfig] | None = None,
    enc_layers: list[LayerConfig] | None = None,
    context: int = 64,
    **layer_kw,
) -> ArchConfig:
    """A tiny model; `layers` overrides the decoder (or the only stack) layer by layer."""
    kw = dict(layer_kw)
    arch_fields = {f.name for f in dataclasses.fields(ArchConfig)}
    shared = {"norm", "norm_eps", "activation", "dropout"}  # for the layers and the model alike
    extra = {k: kw[k] for k in list(kw) if k in arch_fields and k not in ("position", "heads")}
    for k in set(extra) - shared:
        kw.pop(k)
    kw.setdefault("position", position)
    d = kw.get("d", 32)
    if arch == "decoder":
        stacks = dict(decoder=StackConfig(tuple(layers or [layer(**kw)] * n_layers)))
    elif arch == "encoder":
        kw.setdefault("attention", "bidirectional")
        stacks = dict(encoder=StackConfig(tuple(layers or [layer(**kw)] * n_layers)))
    else:
        enc = enc_layers or [layer(**{**kw, "attention": "bidirectional"})] * n_layers
        dec = layers or [layer(**kw, cross_attention=True)] * n_layers
        stacks = dict(encoder=StackConfig(tuple(enc)), decoder=StackConfig(tuple(dec)))
    return ArchConfig(
        name="tiny",
        arch=arch,
        vocab=VOCAB,
        context=context,
        d_model=d,
        position=PositionConfig(kind=position),
        heads=out_heads,
        **stacks,
        **extra,
    )


def tiny(arch: str = "decoder", seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return build_model(make_arch(arch, **kw)).eval()


def ids(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- shapes and heads -------------------------------------------------------------------------


def test_decoder_output_shapes():
    model = tiny()
    out = model(ids(3, 10))
    assert isinstance(out, ModelOutput)
    assert out.hidden.shape == (3, 10, 32)
    assert out.logits.shape == (3, 10, VOCAB)
    assert out.nsp_logits is None and out.class_logits is None and out.scores is None


def test_encoder_with_every_head():
    heads = (HeadConfig("mlm", transform=True), HeadConfig("nsp"), HeadConfig("classifier", classes=5, pool="first"),
             HeadConfig("scalar", pool="mean"))
    model = tiny("encoder", out_heads=heads, segments=2, pooler=True, embed_norm=True, tie_embeddings=True)
    x = ids(3, 9)
    segments = torch.zeros_like(x)
    segments[:, 5:] = 1
    out = model(x, segment_ids=segments, attention_mask=torch.ones_like(x))
    assert out.hidden.shape == (3, 9, 32)
    assert out.logits.shape == (3, 9, VOCAB)
    assert out.nsp_logits.shape == (3, 2)
    assert out.class_logits.shape == (3, 5)
    assert out.scores.shape == (3,)
    # the mlm decoder shares the embedding matrix but keeps its own bias
    assert model.mlm_head.decoder.weight is model.embed.weight
    assert model.mlm_head.decoder.bias.shape == (VOCAB,)
    assert model.mlm_head.dense is not None and model.mlm_head.norm is not None
    # segment embeddings matter
    assert not torch.allclose(out.hidden, model(x, segment_ids=torch.zeros_like(x)).hidden)


def test_encoder_decoder_shapes():
    model = tiny("encoder_decoder", position="relative", out_heads=(HeadConfig("lm"), HeadConfig("scalar")))
    out = model(ids(2, 7), decoder_input_ids=ids(2, 5, seed=3))
    assert out.hidden.shape == (2, 5, 32)
    assert out.encoder_hidden.shape == (2, 7, 32)
    assert out.logits.shape == (2, 5, VOCAB)
    assert out.scores.shape == (2,)
    assert model.encoder.rel_bias.bidirectional and not model.decoder.rel_bias.bidirectional
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(ids(2, 7))


def test_scalar_head_last_pool_reads_last_real_token():
    model = tiny(out_heads=(HeadConfig("scalar", pool="last"),))
    x = ids(1, 8)
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 8 + [0] * 3])
    assert torch.allclose(model(x).scores, model(padded, attention_mask=mask).scores, atol=1e-6)


def test_module_names_are_stable():
    model = tiny("encoder_decoder", position="learned", bias=True)
    names = dict(model.named_parameters())
    for name in [
        "embed.weight", "pos_embed.weight", "lm_head.weight",
        "encoder.layers.0.attn_norm.weight", "encoder.layers.0.attn.qkv_proj.weight",
        "encoder.layers.0.attn.o_proj.bias", "encoder.layers.1.mlp.up_proj.weight",
        "encoder.layers.1.mlp.down_proj.weight", "encoder.final_norm.weight",
        "decoder.layers.0.cross_norm.weight", "decoder.layers.0.cross_attn.q_proj.weight",
        "decoder.layers.0.cross_attn.kv_proj.weight", "decoder.layers.0.cross_attn.o_proj.weight",
        "decoder.layers.0.mlp_norm.bias",
    ]:
        assert name in names or name == "lm_head.weight", name
    assert model.decoder.layers[0].attn.qkv_proj.weight.shape == (3 * 32, 32)
    assert model.decoder.layers[0].cross_attn.kv_proj.weight.shape == (2 * 32, 32)
    gated = tiny(activation="swiglu", norm="rmsnorm", bias=False)
    block = gated.decoder.layers[0]
    assert block.mlp.gate_proj.weight.shape == (48, 32)
    assert block.attn.qkv_proj.bias is None and not hasattr(block.attn_norm, "bias")


def test_gated_mlp_is_down_of_act_gate_times_up():
    model = tiny(activation="geglu", bias=False)
    mlp = model.decoder.layers[0].mlp
    x = torch.randn(2, 3, 32)
    expected = mlp.down_proj(torch.nn.functional.gelu(mlp.gate_proj(x)) * mlp.up_proj(x))
    assert torch.allclose(mlp(x), expected)


# ---- masking ----------------------------------------------------------------------------------


def changed_positions(model: Transformer, x: torch.Tensor, at: int, **kw) -> torch.Tensor:
    """Which output positions change when the token at `at` changes: (T,) bool."""
    y = x.clone()
    y[:, at] = (y[:, at] + 1) % VOCAB
    diff = (model(x, **kw).hidden - model(y, **kw).hidden).abs().amax(dim=(0, 2))
    return diff > 1e-6


@pytest.mark.parametrize("position", ["learned", "rope", "alibi", "relative", "sinusoidal", "none"])
def test_causal_masking_blocks_the_future(position):
    model = tiny(position=position)
    changed = changed_positions(model, ids(1, 10), at=6)
    assert not changed[:6].any() and changed[6:].all()


def test_sliding_window_blocks_old_keys():
    model = tiny(n_layers=1, attention="sliding", window=3, position="rope")
    x = ids(1, 10)
    changed = changed_positions(model, x, at=2)
    # position 2 is seen by queries 2, 3, 4 (itself and the two after it) and no later one
    assert changed.tolist() == [False, False, True, True, True] + [False] * 5
    # with two layers the receptive field grows to 2 * (window - 1) back
    deep = tiny(n_layers=2, attention="sliding", window=3, position="rope")
    assert changed_positions(deep, x, at=2).tolist() == [False] * 2 + [True] * 5 + [False] * 3


def test_mixed_sliding_and_causal_layers():
    layers = [layer(attention="sliding", window=2, position="rope"), layer(position="rope")]
    model = tiny(layers=layers, position="rope")
    assert [b.attn.kind for b in model.decoder.layers] == ["sliding", "causal"]
    changed = changed_positions(model, ids(1, 10), at=1)
    assert not changed[:1].any() and changed[1:].all()  # the global layer sees far back


def test_prefix_attention_is_bidirectional_inside_the_prefix_only():
    model = tiny(attention="prefix", position="rope")
    x = ids(2, 10)
    prefix = torch.tensor([4, 4])
    # a token inside the prefix is seen by the whole prefix, before and after it
    assert changed_positions(model, x, at=3, prefix_lengths=prefix).all()
    # a token after the prefix is not seen by the prefix nor by earlier tokens
    assert changed_positions(model, x, at=6, prefix_lengths=prefix).tolist() == [False] * 6 + [True] * 4
    with pytest.raises(ValueError, match="prefix_lengths"):
        model(x)


def test_prefix_lengths_differ_per_row():
    model = tiny(n_layers=1, attention="prefix", position="rope")
    x = ids(2, 8)
    y = x.clone()
    y[:, 2] = (y[:, 2] + 1) % VOCAB
    prefix = torch.tensor([3, 1])
    diff = (model(x, prefix_lengths=prefix).hidden - model(y, prefix_lengths=prefix).hidden).abs().amax(-1)
    assert diff[0, 0] > 1e-6  # row 0: token 2 is in the prefix, query 0 sees it
    assert diff[1, 0] < 1e-6 and diff[1, 1] < 1e-6  # row 1: prefix of one, plain causal after


def test_bidirectional_encoder_sees_everything():
    model = tiny("encoder", position="relative")
    assert changed_positions(model, ids(1, 9), at=7).all()


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("decoder", dict(position="learned")),
        ("decoder", dict(position="rope", kv_heads=2)),
        ("decoder", dict(position="alibi")),
        ("decoder", dict(position="relative")),
        ("decoder", dict(position="rope", attention="sliding", window=4)),
        ("decoder", dict(position="rope", attention="prefix")),
        ("encoder", dict(position="learned", placement="post")),
        ("encoder", dict(position="alibi")),
        ("encoder_decoder", dict(position="relative")),
    ],
)
def test_right_padding_does_not_change_real_tokens(arch, kw):
    model = tiny(arch, **kw)
    x = ids(2, 7)
    padded = torch.cat([x, torch.full((2, 4), 5)], dim=1)
    mask = torch.ones_like(padded, dtype=torch.bool)
    mask[:, 7:] = False
    extra = {"prefix_lengths": torch.tensor([3, 5])} if kw.get("attention") == "prefix" else {}
    if arch == "encoder_decoder":
        dec = ids(2, 5, seed=4)
        ref = model(x, decoder_input_ids=dec).hidden
        got = model(padded, attention_mask=mask, decoder_input_ids=dec).hidden
        assert torch.allclose(ref, got, atol=1e-5)
        return
    ref = model(x, **extra).hidden
    got = model(padded, attention_mask=mask, **extra)
    assert torch.allclose(ref, got.hidden[:, :7], atol=1e-5)
    assert not got.hidden.isnan().any()


def test_fully_padded_rows_give_no_nan():
    model = tiny("encoder_decoder", position="relative")
    x = ids(2, 6)
    mask = torch.ones_like(x)
    mask[1] = 0  # a row of nothing but padding
    out = model(x, attention_mask=mask, decoder_input_ids=ids(2, 3), decoder_attention_mask=mask[:, :3])
    assert not out.hidden.isnan().any() and not out.encoder_hidden.isnan().any()
    left = torch.ones(2, 6, dtype=torch.long)
    left[:, :3] = 0  # left padding: the first queries see only padding keys
    assert not tiny(position="alibi")(x, attention_mask=left).hidden.isnan().any()


def test_gqa_equals_mha_with_repeated_kv_weights():
    gqa = tiny(position="rope", kv_heads=2, heads=4, bias=True)
    mha = tiny(position="rope", kv_heads=4, heads=4, bias=True, seed=5)
    hd = 8

    def repeat_heads(t: torch.Tensor) -> torch.Tensor:  # kv head j serves query heads 2j and 2j+1
        return t.view(2, hd, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * hd, *t.shape[1:])

    state = gqa.state_dict()
    for key in [k for k in state if "qkv_proj" in k]:
        q, k, v = state[key].split([4 * hd, 2 * hd, 2 * hd])
        state[key] = torch.cat([q, repeat_heads(k), repeat_heads(v)])
    mha.load_state_dict(state)
    x = ids(2, 9)
    assert torch.allclose(gqa(x).logits, mha(x).logits, atol=1e-5)
    mqa = tiny(position="rope", kv_heads=1)
    assert mqa.decoder.layers[0].attn.qkv_proj.weight.shape == ((4 + 2) * hd, 32)
    assert mqa(x).logits.shape == (2, 9, VOCAB)


# ---- weights ----------------------------------------------------------------------------------


def test_tied_embeddings_share_storage():
    model = tiny(tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    n_unique = sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once
    untied = tiny(tie_embeddings=False)
    assert sum(p.numel() for p in untied.parameters()) - n_unique == VOCAB * 32
    assert model.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()


def test_init_is_gpt2_style():
    torch.manual_seed(0)
    model = build_model(make_arch(d=256, d_ff=512, heads=4, n_layers=2, norm="layernorm"))
    block = model.decoder.layers[0]
    assert abs(block.attn.qkv_proj.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.down_proj.weight.std().item() - 0.02 / 2) < 0.002  # 0.02 / sqrt(2 * 2)
    assert (block.attn.qkv_proj.bias == 0).all()
    assert (block.attn_norm.weight == 1).all() and (block.attn_norm.bias == 0).all()


def test_dtype_and_device():
    model = build_model(make_arch(tie_embeddings=True), dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head.weight is model.embed.weight
    out = model(ids(1, 5))
    assert out.logits.dtype == torch.bfloat16 and not out.logits.isnan().any()


def test_meta_build_allocates_nothing_for_a_405b_design():
    big = layer(d=16_384, heads=128, kv_heads=8, head_dim=128, d_ff=53_248, position="rope",
                norm="rmsnorm", activation="swiglu", bias=False)
    arch = dataclasses.replace(make_arch(layers=[big] * 126, position="rope", d=16_384, context=8192), vocab=128_256)
    model = build_model(arch, device="meta")
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    n = sum(p.numel() for p in params)
    per_layer = 16_384 * (128 + 2 * 8) * 128 + 128 * 128 * 16_384 + 3 * 16_384 * 53_248 + 2 * 16_384
    assert n == 126 * per_layer + 2 * 128_256 * 16_384 + 16_384
    assert 405e9 < n < 406e9


def test_backward_reaches_every_parameter():
    heads = (HeadConfig("lm"), HeadConfig("scalar"))
    model = tiny("encoder_decoder", position="relative", out_heads=heads, activation="swiglu", norm="rmsnorm",
                 tie_embeddings=True, dropout=0.1).train()
    out = model(ids(2, 6), decoder_input_ids=ids(2, 5))
    (out.logits.logsumexp(-1).mean() + out.scores.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_dropout_only_in_training():
    model = tiny(dropout=0.5)
    x = ids(1, 6)
    assert torch.equal(model(x).hidden, model(x).hidden)
    model.train()
    assert not torch.equal(model(x).hidden, model(x).hidden)


def test_check_buildable_reports_every_problem_at_once():
    bad = layer(heads=4, kv_heads=3, attention="sliding", window=None, d=24, head_dim=5, position="rope")
    arch = make_arch(layers=[bad])
    problems = check_buildable(arch)
    text = "\n".join(problems)
    assert "kv_heads (3) must divide heads (4)" in text
    assert "window" in text and "even head_dim" in text and "d_model 24" in text
    with pytest.raises(ValueError, match="cannot build model 'tiny'"):
        build_model(arch)


@pytest.mark.parametrize(
    "arch, needs",
    [
        ("decoder", "arch 'decoder' needs a decoder stack only"),
        ("encoder", "arch 'encoder' needs an encoder stack only"),
        ("encoder_decoder", "arch 'encoder_decoder' needs both stacks"),
    ],
)
def test_stacks_must_match_the_arch(arch, needs):
    # a decoder/encoder given the other stack too; an encoder-decoder without its decoder
    both = make_arch("encoder_decoder")
    if arch == "encoder_decoder":
        wrong = dataclasses.replace(both, decoder=None)
    else:
        wrong = dataclasses.replace(both, arch=arch)
    assert needs in check_buildable(wrong)
    assert "unknown arch 'gpt'" in check_buildable(dataclasses.replace(both, arch="gpt"))


def test_relative_buckets_too_few_for_t5_bucketing_are_refused():
    arch = make_arch("encoder", layers=[dataclasses.replace(layer(attention="bidirectional"),
                                                             position=PositionConfig("relative", buckets=2))])
    assert any("2 buckets leave 0 exact distances" in p for p in check_buildable(arch))


def test_meta_build_runs_no_init_work():
    """nn.Embedding's own init on meta imports torch._dynamo (seconds); build_model skips it."""
    code = (
        "import sys, torch\n"
        "from lmspec.compiler.arch import *\n"
        "from lmspec.compiler.build import build_model\n"
        "L = LayerConfig(d_model=64, heads=4, kv_heads=4, head_dim=16, d_ff=128, position=PositionConfig('relative'))\n"
        "arch = ArchConfig(name='m', arch='encoder_decoder', vocab=100, context=32, d_model=64, segments=2,\n"
        "                  position=PositionConfig('learned'), encoder=StackConfig((L,)), decoder=StackConfig((L,)))\n"
        "build_model(arch, device='meta')\n"
        "print(any(name.startswith('torch._dynamo') for name in sys.modules))\n"
    )
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert result.stdout.strip() == "False"


def test_learned_positions_beyond_context_raise():
    model = tiny(context=8)
    with pytest.raises(ValueError, match="9 positions do not fit the learned position table"):
        model(ids(1, 9))
    with pytest.raises(ValueError, match="10 positions do not fit"):
        model.generate(ids(1, 4), max_new_tokens=7)
    assert model.generate(ids(1, 4), max_new_tokens=5).shape == (1, 9)  # 8 tokens fed, 9 returned


# ---- positions --------------------------------------------------------------------------------


def test_sinusoidal_table_values():
    table = sinusoidal_positions(torch.arange(3)[None], 4, torch.float32)[0]
    # dims (sin p, cos p, sin p/100, cos p/100) for d = 4
    expected = torch.tensor([[0, 1, 0, 1], [0.841471, 0.540302, 0.01, 0.99995], [0.909297, -0.416147, 0.02, 0.9998]])
    assert torch.allclose(table, expected, atol=1e-5)


def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 12 heads: the 8-head slopes, then every other one of the 16-head series
    sixteen = [2.0 ** (-(i + 1) / 2) for i in range(16)]
    assert torch.allclose(alibi_slopes(12), torch.tensor([2.0 ** -(i + 1) for i in range(8)] + sixteen[0::2][:4]))


def test_relative_buckets_match_t5():
    rel = torch.tensor([-200, -20, -5, -1, 0, 1, 5, 20, 200])
    bi = relative_position_bucket(rel, bidirectional=True, buckets=32, max_distance=128)
    uni = relative_position_bucket(rel, bidirectional=False, buckets=32, max_distance=128)
    # values from Hugging Face T5's _relative_position_bucket
    assert bi.tolist() == [15, 10, 5, 1, 0, 17, 21, 26, 31]
    assert uni.tolist() == [31, 17, 5, 1, 0, 0, 0, 0, 0]


# ---- KV cache ---------------------------------------------------------------------------------

CACHE_CASES = {
    "rope": dict(position="rope"),
    "alibi": dict(position="alibi"),
    "learned": dict(position="learned"),
    "sinusoidal": dict(position="sinusoidal"),
    "none": dict(position="none"),
    "relative": dict(position="relative"),
    "sliding": dict(position="rope", attention="sliding", window=3),
    "gqa": dict(position="rope", heads=4, kv_heads=2),
    "mqa": dict(position="alibi", heads=4, kv_heads=1),
    "post_norm": dict(position="learned", placement="post"),
    "mixed": dict(position="rope", layers=[layer(attention="sliding", window=2, position="rope"),
                                           layer(position="alibi", kv_heads=2), layer(position="rope")]),
}


def incremental_logits(model: Transformer, x: torch.Tensor, chunks: list[int], **kw) -> torch.Tensor:
    cache = model.new_cache(x.shape[0], x.shape[1])
    outs, at = [], 0
    for n in chunks:
        outs.append(model(x[:, at : at + n], cache=cache, **kw).logits)
        at += n
    assert at == x.shape[1] and cache.length == at
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("case", sorted(CACHE_CASES))
def test_kv_cache_matches_full_forward(case):
    model = tiny(**CACHE_CASES[case])
    x = ids(3, 11)  # longer than every window above
    full = model(x).logits
    one_by_one = incremental_logits(model, x, [1] * 11)
    prefill_then_steps = incremental_logits(model, x, [5, 1, 1, 3, 1])
    assert torch.allclose(full, one_by_one, atol=1e-5)
    assert torch.allclose(full, prefill_then_steps, atol=1e-5)


def test_kv_cache_prefix_lm():
    model = tiny(position="rope", attention="prefix")
    x = ids(2, 9)
    prefix = torch.tensor([4, 6])
    full = model(x, prefix_lengths=prefix).logits
    got = incremental_logits(model, x, [6, 1, 2], prefix_lengths=prefix)
    assert torch.allclose(full, got, atol=1e-5)


def test_kv_cache_with_left_padding_matches_unpadded_rows():
    model = tiny(position="rope")
    x = ids(1, 6)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 6])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = model.new_cache(1, 9)
    got = model(padded, attention_mask=mask, position_ids=positions, cache=cache).logits[:, 3:]
    assert torch.allclose(got, model(x).logits, atol=1e-5)
    # a mask spanning cached and new tokens (Hugging Face style) is read for the new ones only
    step = ids(1, 1, seed=7)
    cache = model.new_cache(1, 10)
    model(padded, attention_mask=mask, position_ids=positions, cache=cache)
    full_mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
    got = model(step, attention_mask=full_mask, position_ids=positions[:, -1:] + 1, cache=cache).logits
    assert torch.allclose(got, model(torch.cat([x, step], dim=1)).logits[:, -1:], atol=1e-5)


def test_kv_cache_encoder_decoder_computes_cross_kv_once():
    model = tiny("encoder_decoder", position="relative", scale="none", tied_head_scale=32**-0.5, tie_embeddings=True)
    src, dec = ids(2, 7), ids(2, 6, seed=9)
    src_mask = torch.ones_like(src, dtype=torch.bool)
    src_mask[1, 5:] = False
    full = model(src, attention_mask=src_mask, decoder_input_ids=dec).logits
    cache = model.new_cache(2, 6)
    first = model(src, attention_mask=src_mask, decoder_input_ids=dec[:, :2], cache=cache)
    cross = [layer.cross_kv for layer in cache.layers]
    assert first.encoder_hidden is not None and all(kv is not None for kv in cross)
    rest = []
    for t in range(2, 6):
        out = model(decoder_input_ids=dec[:, t : t + 1], cache=cache)  # the encoder does not run again
        assert out.encoder_hidden is None
        rest.append(out.logits)
    assert all(layer.cross_kv is kv for layer, kv in zip(cache.layers, cross))
    assert torch.allclose(full, torch.cat([first.logits, *rest], dim=1), atol=1e-5)


def test_kv_cache_overflow_is_a_clear_error():
    model = tiny(position="rope")
    cache = model.new_cache(1, 4)
    model(ids(1, 3), cache=cache)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(ids(1, 2), cache=cache)
    assert isinstance(cache, KVCache)
    with pytest.raises(ValueError, match="encoder-only"):
        tiny("encoder").new_cache(1, 4)


# ---- generation -------------------------------------------------------------------------------


def greedy_by_full_forward(model: Transformer, x: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize("case", ["rope", "alibi", "learned", "relative", "sliding", "gqa"])
def test_greedy_generate_equals_repeated_full_forward(case):
    model = tiny(**CACHE_CASES[case])
    x = ids(2, 5)
    assert torch.equal(model.generate(x, max_new_tokens=8, temperature=0), greedy_by_full_forward(model, x, 8))


def test_generate_encoder_decoder_greedy():
    model = tiny("encoder_decoder", position="relative", pad_id=0)
    src = ids(2, 6)
    got = model.generate(src, max_new_tokens=5, temperature=0)
    dec = torch.zeros(2, 1, dtype=torch.long)  # T5 starts decoding from the pad id
    for _ in range(5):
        dec = torch.cat([dec, model(src, decoder_input_ids=dec).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, dec)


@pytest.mark.parametrize("position", ["rope", "learned", "alibi", "relative"])
def test_generate_with_left_padding_matches_each_row_alone(position):
    model = tiny(position=position)
    a, b = ids(1, 6, seed=2), ids(1, 3, seed=3)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    got = model.generate(batch, attention_mask=mask, max_new_tokens=6, temperature=0)
    assert torch.equal(got[0, 6:], model.generate(a, max_new_tokens=6, temperature=0)[0, 6:])
    assert torch.equal(got[1, 6:], model.generate(b, max_new_tokens=6, temperature=0)[0, 3:])
    with pytest.raises(ValueError, match="left"):
        model.generate(batch, attention_mask=mask.flip(1), max_new_tokens=2)


def test_generate_sampling_is_reproducible_and_respects_eos():
    model = tiny(position="rope")
    x = ids(4, 3)
    run = lambda seed, **kw: model.generate(x, max_new_tokens=10, temperature=1.0, top_k=5, top_p=0.9,
                                            generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(0), run(0))
    assert run(0).shape == (4, 13)
    eos = int(run(0)[0, 4])  # a token row 0 emits at its second step
    out = run(0, eos_id=eos)
    assert out[0, 4] == eos and (out[0, 5:] == eos).all()  # finished rows are filled
    greedy = model.generate(x, max_new_tokens=4, temperature=0)
    first = int(greedy[0, 3])
    stopped = model.generate(x[:1], max_new_tokens=4, temperature=0, eos_id=first)
    assert stopped.shape == (1, 4)  # everyone finished: generation stops early


def test_generate_keeps_training_mode():
    model = tiny().train()
    model.generate(ids(1, 3), max_new_tokens=2)
    assert model.training
