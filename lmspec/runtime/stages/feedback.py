"""A `feedback` stage: the policy writes `samples` responses per prompt, the judge labels every
pair of them, and the labelled pairs become a preference set that reward models (and DPO) read.

Step i handles prompts i*batch .. (i+1)*batch - 1 of the prompt list (the first `tokens`
tokens of documents of the prompt data, in the data block's seeded order). Sampling uses a
generator seeded by (seed, step), so a resumed collection writes the pairs the uninterrupted
one would have; the records collected so far are part of every checkpoint (one per step),
and the judgments themselves are cached in RUN/judgments/, so a crash pays for none twice.

With N processes rank r samples the r-th of N near-equal consecutive parts of the step's
prompts, with a generator seeded by (seed, step, r) — so the samples depend on N — and rank 0
gathers every rank's texts, in prompt order, and judges all the pairs: the judge, its cache in
RUN/judgments/ and the preference set have one writer, and the records are those one process
would make of the same samples.

The preference set (final/preferences.jsonl) has one line per pair:
    {"prompt", "a", "b", "p", "split", "prompt_index", "judge", "scores": [s_a, s_b] | null,
     "p_ab", "p_ba"}
where p = P(a is preferred to b), a soft label in [0, 1]: with `debias: swap`,
p = (p_ab + 1 - p_ba) / 2 from asking in both orders. Every pair (j, k), j < k, of a prompt's
samples is labelled: `samples: 4` gives 6 pairs per prompt.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import torch

from lmspec.runtime import distributed, engine
from lmspec.runtime.checkpoint import write_json_atomic
from lmspec.runtime.errors import RunError
from lmspec.runtime.stages.base import Stage, StageArtifacts

__all__ = ["FeedbackStage", "prompt_prefixes", "generate_responses", "agreement"]


def prompt_prefixes(ctx, prompts_spec, tokenizer, *, count: int | None = None) -> list[torch.Tensor]:
    """The prompts of `data.prefixes(tokens: T, count: N)`: the first T tokens of N documents of
    the data block's training split, in its seeded order (documents shorter than T are whole
    prompts); of `data.until("marker", tokens: T, count: N)`: the text of each document up to
    and including the first "marker", at most its last T tokens, documents without the marker
    left out."""
    from lmspec.runtime.data import ExampleStream, prepare_dataset
    from lmspec.runtime.objectives.base import Reads

    data = ctx.report.spec.blocks[prompts_spec.data]
    block = ctx.report.spec.resolved.blocks[prompts_spec.data]
    dataset = prepare_dataset(data, name=prompts_spec.data, spec_file=block.span.file, tokenizer=tokenizer,
                              cache_dir=ctx.cache_dir)
    stream = ExampleStream(dataset.train, Reads("documents"), seed=data.seed, shuffle=data.shuffle)
    n = count if count is not None else (prompts_spec.count or len(stream))
    if prompts_spec.kind == "until":
        out = _until(stream, tokenizer, prompts_spec, n)
    else:
        out = [e["tokens"][:prompts_spec.tokens].long() for e in stream.take(0, n)]
    empty = sum(1 for p in out if len(p) == 0)
    if empty:
        raise RunError(f"{empty} of the prompts cut from data '{prompts_spec.data}' are empty",
                       help="the data holds empty documents; remove them")
    return out


def _until(stream, tokenizer, spec, n: int) -> list[torch.Tensor]:
    """Documents in stream order, each read once, until n of them hold the marker."""
    out = []
    for position in range(0, len(stream), 256):
        for e in stream.take(position, min(256, len(stream) - position)):
            text = tokenizer.decode(e["tokens"].tolist())
            at = text.find(spec.marker)
            if at >= 0:
                ids = tokenizer.encode(text[:at + len(spec.marker)])
                out.append(torch.tensor(ids[-spec.tokens:], dtype=torch.long))
                if len(out) == n:
                    return out
    if spec.count is not None or not out:
        raise RunError(f"data '{spec.data}' holds {len(out)} documents with the marker {spec.marker!r}, and the "
                       f"prompts ask for {spec.count or 1}",
                       help="lower count, or choose a marker the documents contain")
    return out


def generate_responses(model, prompts: list[torch.Tensor], *, max_new_tokens: int, temperature: float,
                       top_k: int | None, eos_id: int | None, pad_id: int, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample a continuation of every prompt in one batch, prompts padded on the left.

    Returns (query (B, P) left-padded, query_mask (B, P), response (B, R) right-padded with
    pad_id after eos); response_mask is response != pad ... given by `response_mask`."""
    P = max(len(p) for p in prompts)
    query = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    qmask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        query[i, P - len(p):], qmask[i, P - len(p):] = p, True
    out = model.generate(query.to(device), attention_mask=qmask.to(device), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, eos_id=eos_id, generator=generator)
    return query, qmask, out[:, P:].cpu()


def response_mask(response: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """(B, R) True on the response's real tokens: up to and including the first eos."""
    if eos_id is None:
        return torch.ones_like(response, dtype=torch.bool)
    is_eos = response == eos_id
    after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first eos
    return ~after


def agreement(records: list[dict]) -> dict:
    """Judge statistics of a preference set: label distribution and, with swap debiasing, how
    often the two orders agree on the winner."""
    ps = [r["p"] for r in records]
    stats: dict = {"pairs": len(records)}
    if not ps:
        return stats
    edges = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    hist = [0] * (len(edges) - 1)
    for p in ps:
        hist[min(int(sum(p >= e for e in edges[1:-1])), len(hist) - 1)] += 1
    stats.update(label_mean=sum(ps) / len(ps), decisive=sum(abs(p - 0.5) >= 0.2 for p in ps) / len(ps),
                 histogram={f"{lo:.1f}-{hi:.1f}": n for lo, hi, n in zip(edges, edges[1:], hist)})
    swapped = [r for r in records if r.get("p_ba") is not None]
    if swapped:
        agree = [(r["p_ab"] - 0.5) * ((1 - r["p_ba"]) - 0.5) > 0 for r in swapped]
        stats.update(swap_consistency=sum(agree) / len(agree),
                     position_bias=sum(r["p_ab"] - (1 - r["p_ba"]) for r in swapped) / (2 * len(swapped)))
    return stats


class FeedbackStage(Stage):
    kind = "feedback"

    def __init__(self, plan, ctx):
        super().__init__(plan, ctx)
        self.log_every = self.spec.log_every
        self.checkpoint_every = 1  # a step's records are cheap to keep; a crash loses at most one step
        self.records: list[dict] = []
        self.total_steps = 1  # set in setup(), once the prompts are known

    def setup(self) -> None:
        from lmspec.compiler.compile import build_stage_model
        from lmspec.runtime.judges.build import build_judge
        from lmspec.runtime.tokenizers import load_tokenizer

        s, plan, ctx = self.spec, self.plan, self.ctx
        self.world = distributed.world()
        engine.seed_everything(s.seed)
        self.device = ctx.device
        source = ctx.artifacts.get(plan.init.stage) if plan.init and plan.init.stage else None
        with distributed.rank_zero_first():  # rank 0 saves the tokenizer and tokenises the prompts into the cache
            self.tokenizer = load_tokenizer(source.tokenizer) if source and source.tokenizer else \
                ctx.tokenizer(None)[0]
            self.prompts = prompt_prefixes(ctx, s.prompts, self.tokenizer)
        self.model = build_stage_model(plan, device=self.device,
                                       artifacts={k: a.weights for k, a in ctx.artifacts.items() if a.weights}).eval()
        self.total_steps = math.ceil(len(self.prompts) / s.batch)
        n_val = round(len(self.prompts) * s.validation)
        self.first_validation = len(self.prompts) - n_val  # the last prompts are held out
        self.judge = build_judge(s.judge, ctx) if self.world.main else None  # rank 0 judges for all
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0

    def _sample(self, i: int, lo: int, hi: int) -> tuple[list[str], int]:
        """This rank's share of prompts lo..hi-1, `samples` responses each: (their texts, prompt
        by prompt, and their tokens)."""
        s, w = self.spec, self.world
        cut = [lo + (hi - lo) * r // w.size for r in range(w.size + 1)]  # near-equal consecutive parts
        mine = self.prompts[cut[w.rank]:cut[w.rank + 1]]
        if not mine:
            return [], 0
        gen = torch.Generator(device=self.device).manual_seed(engine.step_seed(s.seed, i, w.rank, salt=2))
        _, _, response = generate_responses(self.model, [p for p in mine for _ in range(s.samples)],
                                            max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                            top_k=s.top_k, eos_id=self.tokenizer.eos_id, pad_id=self.pad_id,
                                            generator=gen, device=self.device)
        mask = response_mask(response, self.tokenizer.eos_id)
        return [self.tokenizer.decode(r[m].tolist()) for r, m in zip(response, mask)], int(mask.sum())

    def step(self, i: int) -> dict[str, float]:
        s = self.spec
        lo, hi = i * s.batch, min((i + 1) * s.batch, len(self.prompts))
        texts, tokens = self._sample(i, lo, hi)
        if self.world.size > 1:
            shares = distributed.gather_json([texts, tokens])
            texts, tokens = [t for part, _ in shares for t in part], sum(n for _, n in shares)
            if not self.world.main:
                return {"tokens": tokens}  # rank 0 judges, logs and keeps the records
        prompt_texts = [self.tokenizer.decode(p.tolist()) for p in self.prompts[lo:hi]]
        rows = []  # (prompt index, j, k)
        for n in range(hi - lo):
            rows += [(n, j, k) for j, k in combinations(range(s.samples), 2)]
        ptxt = [prompt_texts[n] for n, _, _ in rows]
        a = [texts[n * s.samples + j] for n, j, _ in rows]
        b = [texts[n * s.samples + k] for n, _, k in rows]
        try:
            if s.debias == "swap":
                from lmspec.runtime.judges import swap_debiased

                p, p_ab, p_ba = swap_debiased(self.judge, ptxt, a, b)
            else:
                p, p_ab, p_ba = self.judge.compare(ptxt, a, b), None, None
            scores = None if self.judge.pairwise else (self.judge.score(ptxt, a), self.judge.score(ptxt, b))
        except Exception as err:  # a judge that cannot answer: name the stage, the step, the judge
            from lmspec.runtime.judges import JudgeError

            if isinstance(err, (JudgeError, RunError)):
                raise RunError(f"stage '{self.name}', step {i + 1}: {err}", help=getattr(err, "help", None)) from None
            raise
        if not bool(torch.isfinite(p).all()):
            raise RunError(f"stage '{self.name}', step {i + 1}: judge '{s.judge}' gave a non-finite label",
                           help="check the judge's weights (was its stage's loss finite?)")
        for r, (n, j, k) in enumerate(rows):
            index = lo + n
            self.records.append({
                "prompt": ptxt[r], "a": a[r], "b": b[r], "p": float(p[r]),
                "split": "validation" if index >= self.first_validation else "train", "prompt_index": index,
                "judge": s.judge,
                "scores": None if scores is None else [float(scores[0][r]), float(scores[1][r])],
                "p_ab": None if p_ab is None else float(p_ab[r]), "p_ba": None if p_ba is None else float(p_ba[r]),
            })
        new = self.records[-len(rows):]
        out = {"pairs": float(len(rows)), "label_mean": sum(x["p"] for x in new) / max(len(new), 1),
               "response_length": tokens / max(len(texts), 1), "tokens": tokens}
        if scores is not None and hasattr(self.judge, "probability"):
            both = torch.sigmoid(torch.cat(scores)) if self.judge.how == "probability" else None
            if both is not None:
                out["judge_positive"] = float((both > 0.5).double().mean())
        return out

    def evaluate(self) -> dict[str, float]:
        stats = agreement(self.records)
        return {k: v for k, v in stats.items() if isinstance(v, float)}

    def state_dict(self):
        return {}, {"records": self.records}

    def load_state_dict(self, tensors, state) -> None:
        self.records = list(state["records"])

    def artifacts(self, directory: Path) -> StageArtifacts:
        directory.mkdir(parents=True, exist_ok=True)
        if not self.records:
            raise RunError(f"stage '{self.name}' collected no preference pairs", help="raise prompts.count")
        path = directory / "preferences.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        write_json_atomic(directory / "agreement.json", agreement(self.records))
        self.tokenizer.save(directory / "tokenizer")
        return StageArtifacts({"preferences": path, "agreement": directory / "agreement.json",
                               "tokenizer": directory / "tokenizer"}, None)
