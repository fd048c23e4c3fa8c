"""Sliding-window layers keep their KV cache in a ring buffer of `window` rows: decoding with it
agrees with a full-length cache and with a full forward pass, token for token, under left
padding, prompts longer than the window, chunked prefill and mixed sliding/global stacks; and
`kv_cache_memory` counts exactly the bytes the cache allocates."""

from __future__ import annotations

import pytest
import torch

from lmspec.compiler.analysis import kv_cache_memory
from lmspec.compiler.arch import ArchConfig, AttentionConfig, HeadConfig, LayerConfig, PositionConfig, StackConfig
from lmspec.compiler.build import build_model
from lmspec.compiler.modules import KVCache, Transformer
from lmspec.compiler.modules.kv_cache import ring_key_count, ring_key_slots

VOCAB = 53


def layer(kind: str = "causal", window: int | None = None, position: str = "rope", kv_heads: int = 4) -> LayerConfig:
    return LayerConfig(d_model=32, heads=4, kv_heads=kv_heads, head_dim=8, d_ff=48,
                       attention=AttentionConfig(kind=kind, window=window), position=PositionConfig(kind=position))


def arch_of(*layers: LayerConfig, position: str = "rope") -> ArchConfig:
    return ArchConfig(name="ring", arch="decoder", vocab=VOCAB, context=64, d_model=32,
                      position=PositionConfig(kind=position), heads=(HeadConfig("lm"),),
                      decoder=StackConfig(tuple(layers)))


def model_of(*layers: LayerConfig, position: str = "rope") -> Transformer:
    torch.manual_seed(0)
    return build_model(arch_of(*layers, position=position)).eval()


# per-layer windows as Qwen2/Mistral imports give them: sliding layers of different windows
# among global ones, GQA, and ALiBi on a ring (its bias reads the evicted keys' neighbours' ids)
MIXED = (layer("sliding", 3), layer(kv_heads=2), layer("sliding", 5, kv_heads=2), layer("sliding", 3, "alibi"))


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def full_cache(model: Transformer, batch: int, max_len: int) -> KVCache:
    """What `new_cache` made before ring buffers: every layer keeps every token."""
    return KVCache(batch, max_len, len(model.decoder.layers))


def run_chunks(model: Transformer, cache: KVCache, x: torch.Tensor, chunks: list[int], **kw) -> torch.Tensor:
    outs, at = [], 0
    for n in chunks:
        outs.append(model(x[:, at : at + n], cache=cache, **kw).logits)
        at += n
    assert at == x.shape[1] == cache.length
    return torch.cat(outs, dim=1)


def test_ring_key_slots_name_the_slot_in_every_row():
    assert ring_key_slots(0, 2, 3).tolist() == [0, 1]  # not wrapped yet: slots in order
    assert ring_key_slots(5, 1, 3).tolist() == [3, 4, 5]  # slot s lives in row s % 3
    assert ring_key_slots(7, 1, 3).tolist() == [6, 7, 5]
    # a chunk of 3 would overwrite keys its first queries see: the ring before it, then the chunk
    assert ring_key_slots(4, 3, 3).tolist() == [3, 1, 2, 4, 5, 6]
    assert ring_key_slots(0, 7, 3).tolist() == [0, 1, 2, 3, 4, 5, 6]
    for window in range(1, 6):  # every query's window is there, each slot once, none from the future
        for start in range(12):
            for T in range(1, 8):
                slots = ring_key_slots(start, T, window).tolist()
                assert len(slots) == len(set(slots)) == ring_key_count(start, T, window)
                assert set(range(max(0, start - window + 1), start + T)) <= set(slots)
                assert max(slots) == start + T - 1 and min(slots) >= 0


@pytest.mark.parametrize("chunks", [[1] * 13, [11, 1, 1], [5, 1, 1, 3, 3], [2] * 6 + [1], [4, 4, 4, 1]],
                         ids=["one-by-one", "long-prompt", "mixed", "pairs", "fours"])
def test_ring_decoding_equals_full_cache_and_full_forward(chunks):
    model = model_of(*MIXED)
    x = ids(3, 13)
    with torch.no_grad():
        expected = model(x).logits
        ring = model.new_cache(3, 13)
        got = run_chunks(model, ring, x, chunks)
        full = run_chunks(model, full_cache(model, 3, 13), x, chunks)
    assert [lc.k.shape[2] for lc in ring.layers] == [3, 13, 5, 3]  # rings of `window` rows
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["rope", "alibi", "relative", "learned"])
def test_ring_keeps_exactly_the_last_window_keys(position):
    model = model_of(layer("sliding", 4, position), layer(position=position), position=position)
    x = ids(2, 11)
    with torch.no_grad():
        ring, full = model.new_cache(2, 11), full_cache(model, 2, 11)
        got = run_chunks(model, ring, x, [6, 1, 1, 2, 1])
        want = run_chunks(model, full, x, [6, 1, 1, 2, 1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    rows = ring_key_slots(10, 1, 4)  # after slot 10 was written, rows hold slots 8, 9, 10, 7
    assert rows.tolist() == [8, 9, 10, 7]
    torch.testing.assert_close(ring.layers[0].k, full.layers[0].k[:, :, rows], atol=1e-6, rtol=0)
    torch.testing.assert_close(ring.layers[0].v, full.layers[0].v[:, :, rows], atol=1e-6, rtol=0)


def test_ring_with_left_padding_equals_full_cache_and_unpadded_rows():
    model = model_of(*MIXED)
    lengths = [9, 6, 2]  # padding longer than every window, and a prompt shorter than all of them
    prompts = [ids(1, n, seed=i) for i, n in enumerate(lengths)]
    padded = torch.cat([torch.cat([torch.zeros(1, 9 - p.shape[1], dtype=torch.long), p], dim=1) for p in prompts])
    mask = torch.tensor([[0] * (9 - n) + [1] * n for n in lengths])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    steps = ids(3, 4, seed=5)
    with torch.no_grad():
        outs = {}
        for name, cache in (("ring", model.new_cache(3, 13)), ("full", full_cache(model, 3, 13))):
            logits = [model(padded, attention_mask=mask, position_ids=positions, cache=cache).logits[:, -1:]]
            pos = positions[:, -1:]
            for t in range(4):
                pos = pos + 1
                logits.append(model(steps[:, t : t + 1], position_ids=pos, cache=cache).logits)
            outs[name] = torch.cat(logits, dim=1)  # (3, 5, V)
        torch.testing.assert_close(outs["ring"], outs["full"], atol=1e-5, rtol=0)
        for row, p in enumerate(prompts):  # each row as if it had never been padded
            alone = model(torch.cat([p, steps[row : row + 1]], dim=1)).logits[:, p.shape[1] - 1 :]
            torch.testing.assert_close(outs["ring"][row : row + 1], alone, atol=1e-5, rtol=0)


def test_generate_with_rings_gives_the_full_cache_tokens(monkeypatch):
    model = model_of(*MIXED)
    prompts = ids(3, 8, seed=3)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :2] = 0
    with torch.no_grad():
        ring = model.generate(prompts, attention_mask=mask, max_new_tokens=12, temperature=0)
        monkeypatch.setattr(model, "new_cache", lambda batch, max_len=None: full_cache(model, batch, max_len))
        full = model.generate(prompts, attention_mask=mask, max_new_tokens=12, temperature=0)
    assert ring.shape == (3, 20)
    assert torch.equal(ring, full)


@pytest.mark.parametrize("max_len", [13, 4, 64], ids=["wraps", "shorter-than-windows", "context"])
def test_kv_cache_memory_counts_what_the_rings_allocate(max_len):
    """64 is the model's context: the figure `check` prints (in bf16) for one sequence."""
    arch = arch_of(*MIXED)
    model = build_model(arch).eval()
    cache = model.new_cache(2) if max_len == arch.context else model.new_cache(2, max_len)
    with torch.no_grad():
        model(ids(2, min(max_len, 7)), cache=cache)
    allocated = sum(t.nbytes for lc in cache.layers for t in (lc.k, lc.v))
    assert allocated == kv_cache_memory(arch, batch=2, seq_len=max_len, dtype_bytes=4).total
    per_token = 2 * 2 * 4 * 8 * 4  # k and v, batch 2, 4 kv heads x 8 (layers 1, 2: 2 kv heads), fp32
    rows = [min(3, max_len), max_len, min(5, max_len), min(3, max_len)]
    assert allocated == sum(r * per_token // (2 if i in (1, 2) else 1) for i, r in enumerate(rows))


@pytest.mark.parametrize("family", ["mistral", "qwen2_sliding"])
def test_greedy_generation_with_rings_matches_transformers(tmp_path, family):
    """Mistral (every layer slides) and Qwen2 (the later layers slide): prompts longer than the
    window, left padding, and a continuation that wraps each ring twice, token for token."""
    transformers = pytest.importorskip("transformers")
    from lmspec.compiler.hf import load_hf_model

    transformers.logging.set_verbosity_error()
    shape = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, sliding_window=4)
    torch.manual_seed(0)
    if family == "mistral":
        hf = transformers.MistralForCausalLM(transformers.MistralConfig(**shape))
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape, use_sliding_window=True,
                                                                    max_window_layers=1))
    hf.save_pretrained(tmp_path / family, safe_serialization=True)
    arch, model = load_hf_model(tmp_path / family)
    windows = [(L.attention.kind, L.attention.window) for L in arch.decoder.layers]
    expected = [("sliding", 4)] * 3 if family == "mistral" else [("causal", None), ("sliding", 4), ("sliding", 4)]
    assert windows == expected
    prompts = torch.randint(1, VOCAB, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :7] = 0
    prompts = prompts.masked_fill(mask == 0, 0)
    ours = model.generate(prompts, attention_mask=mask, max_new_tokens=8, temperature=0)
    assert any(lc.ring == 4 for lc in model.new_cache(3, 17).layers)
    with torch.no_grad():
        theirs = hf.eval().generate(prompts, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                                    do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(ours, theirs)
