"""lmspec models against transformers where the weight loader does not reach: ALiBi
(BLOOM), and generation with the KV cache, left padding included, token for token.

Families the loader supports (GPT-2, BERT, T5, Llama, Mistral) are compared logit for logit
in test_hf.py; here weights are copied by hand, so these tests depend only on the modules.
"""

from __future__ import annotations

import pytest
import torch

from lmspec.compiler.arch import ArchConfig, AttentionConfig, LayerConfig, PositionConfig, StackConfig
from lmspec.compiler.build import build_model

transformers = pytest.importorskip("transformers")

VOCAB, D, HEADS, LAYERS = 67, 48, 6, 2  # 6 heads: ALiBi slopes for a head count that is not a power of two


def decoder_arch(position: str, activation: str, embed_norm: bool) -> ArchConfig:
    layer = LayerConfig(
        d_model=D,
        heads=HEADS,
        kv_heads=HEADS,
        head_dim=D // HEADS,
        d_ff=4 * D,
        attention=AttentionConfig("causal"),
        position=PositionConfig(position),
        activation=activation,
    )
    return ArchConfig(
        name=f"{position}_decoder",
        arch="decoder",
        vocab=VOCAB,
        context=64,
        d_model=D,
        position=PositionConfig(position),
        decoder=StackConfig((layer,) * LAYERS),
        tie_embeddings=True,
        embed_norm=embed_norm,
    )


def copy_linear(src: torch.nn.Linear, dst: torch.nn.Linear, weight: torch.Tensor | None = None) -> None:
    dst.weight.copy_(src.weight if weight is None else weight)
    dst.bias.copy_(src.bias)


def copy_norm(src, dst) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


@torch.no_grad()
def bloom_pair():
    torch.manual_seed(0)
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=D, n_layer=LAYERS, n_head=HEADS,
                                      hidden_dropout=0.0, attention_dropout=0.0, pad_token_id=0)
    hf = transformers.BloomForCausalLM(config).eval()
    model = build_model(decoder_arch("alibi", "gelu_tanh", embed_norm=True)).eval()
    t = hf.transformer
    model.embed.weight.copy_(t.word_embeddings.weight)
    copy_norm(t.word_embeddings_layernorm, model.embed_norm)
    hd = D // HEADS
    for h, block in zip(t.h, model.decoder.layers):
        copy_norm(h.input_layernorm, block.attn_norm)
        copy_norm(h.post_attention_layernorm, block.mlp_norm)
        # BLOOM interleaves q, k, v per head: rows (heads, 3, hd); lmspec stacks all q, then k, then v
        qkv = h.self_attention.query_key_value
        W = qkv.weight.view(HEADS, 3, hd, D).transpose(0, 1).reshape(3 * D, D)
        b = qkv.bias.view(HEADS, 3, hd).transpose(0, 1).reshape(3 * D)
        block.attn.qkv_proj.weight.copy_(W)
        block.attn.qkv_proj.bias.copy_(b)
        copy_linear(h.self_attention.dense, block.attn.o_proj)
        copy_linear(h.mlp.dense_h_to_4h, block.mlp.up_proj)
        copy_linear(h.mlp.dense_4h_to_h, block.mlp.down_proj)
    copy_norm(t.ln_f, model.decoder.final_norm)
    return hf, model


@torch.no_grad()
def gpt2_pair():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=D, n_layer=LAYERS, n_head=HEADS,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    model = build_model(decoder_arch("learned", "gelu_tanh", embed_norm=False)).eval()
    t = hf.transformer
    model.embed.weight.copy_(t.wte.weight)
    model.pos_embed.weight.copy_(t.wpe.weight)
    for h, block in zip(t.h, model.decoder.layers):
        copy_norm(h.ln_1, block.attn_norm)
        copy_norm(h.ln_2, block.mlp_norm)
        for src, dst in [(h.attn.c_attn, block.attn.qkv_proj), (h.attn.c_proj, block.attn.o_proj),
                         (h.mlp.c_fc, block.mlp.up_proj), (h.mlp.c_proj, block.mlp.down_proj)]:
            copy_linear(src, dst, weight=src.weight.T)  # GPT-2's Conv1D stores (in, out)
    copy_norm(t.ln_f, model.decoder.final_norm)
    return hf, model


PAIRS = {"bloom_alibi": bloom_pair, "gpt2_learned": gpt2_pair}


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of lengths 7, 4 and 1."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("family", sorted(PAIRS))
def test_logits_match_transformers(family):
    hf, model = PAIRS[family]()
    x = prompts()[0]
    with torch.no_grad():
        expected = hf(input_ids=x).logits
    assert torch.allclose(model(x).logits, expected, atol=1e-5)


@pytest.mark.parametrize("family", sorted(PAIRS))
def test_greedy_generation_matches_transformers_with_left_padding(family):
    hf, model = PAIRS[family]()
    ids, mask = prompts()
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=10, temperature=0)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                             use_cache=True, pad_token_id=0)
    assert torch.equal(ours, theirs)
