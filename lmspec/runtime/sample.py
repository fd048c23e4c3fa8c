"""Sampling from a trained stage: prompts in, text out, token by token, with the KV cache."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

__all__ = ["sample_texts"]


@torch.no_grad()
def sample_texts(model, tokenizer, prompts: Iterable[str], *, max_tokens: int = 128, temperature: float = 0.8,
                 top_k: int | None = 50, top_p: float | None = None, seed: int = 0, num: int = 1,
                 on_text: Callable[[str], None] | None = None, device: str = "cpu") -> list[dict]:
    """For each prompt, `num` samples of up to `max_tokens` new tokens (sample i from seed + i). `on_text` receives the
    decoded text as it grows (streaming); the return value holds every prompt and sample.

    A decoder continues the prompt; an encoder-decoder reads the prompt with its encoder and
    writes a new sequence."""
    from lmspec.runtime.errors import RunError

    if model.decoder is None:
        raise RunError("this stage trained an encoder-only model, which cannot generate text",
                       help="sample from a stage that trains a decoder or an encoder-decoder")
    if model.lm_head is None:
        raise RunError("this stage's model has no lm head to generate with",
                       help="sample from a stage whose model has `head: lm`")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise RunError(f"sampling needs temperature >= 0, top_k >= 1 and top_p in (0, 1]; got {temperature}, "
                       f"{top_k}, {top_p}")
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if model.encoder is None and tokenizer.bos_id is not None and not ids:
            ids = [tokenizer.bos_id]
        if not ids:
            ids = [tokenizer.eos_id if tokenizer.eos_id is not None else 0]
        room = model.context - len(ids) if model.encoder is None else max_tokens
        if room < 1:
            raise RunError(f"the prompt has {len(ids)} tokens, as many as the model's context ({model.context})",
                           help="give a shorter prompt")
        for i in range(num):  # sample i of every prompt draws from seed + i: reproducible one by one
            gen = torch.Generator(device=device).manual_seed(seed + i)
            text = _one(model, tokenizer, ids, min(max_tokens, room), temperature, top_k, top_p, gen, on_text, device)
            out.append({"prompt": prompt, "text": text})
    return out


def _one(model, tokenizer, ids, max_new, temperature, top_k, top_p, gen, on_text, device) -> str:
    """Generate token by token through `Transformer.generate`'s stream callback."""
    new: list[int] = []
    shown = ""

    def stream(token_ids: torch.Tensor) -> None:
        nonlocal shown
        new.append(int(token_ids[0]))
        text = tokenizer.decode(new)
        if on_text is not None and len(text) > len(shown) and not text.endswith("\ufffd"):
            on_text(text[len(shown):])
            shown = text

    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    # an encoder-decoder's decoder starts from the token it was trained to start from
    # (runtime.stages.train): the model's decoder_start_id, else the tokenizer's pad, which a
    # model without pad_id would not know
    own = model.decoder_start_id if model.decoder_start_id is not None else tokenizer.pad_id
    start = {"decoder_start_id": own if own is not None else 0} if model.encoder is not None else {}
    model.generate(prompt, max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                   eos_id=tokenizer.eos_id, generator=gen, on_token=stream, **start)
    if new and tokenizer.eos_id is not None and new[-1] == tokenizer.eos_id:
        new.pop()
    text = tokenizer.decode(new)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown):])
    return text
