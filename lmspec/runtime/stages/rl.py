"""An `rl` stage: on-policy optimisation of a policy against a reward (a reward model trained in
the spec, or a judge: direct RLAIF), with KL to a frozen reference.

One step:
  1. rollout   `per_step` responses, sampled with the KV cache at the rollout temperature from
               prompts of the rollout data (GRPO and RLOO: per_step / group prompts, each
               sampled `group` times, consecutive rows); the generator is seeded by (seed, step)
  2. score     the reward model's scalar, or the judge's score, of prompt + response text
  3. measure   log-probs of the response tokens under the policy (the distribution sampled
               from, temperature included) and the reference; PPO's values
  4. advantages and `epochs` passes of minibatch updates: the algorithm's (lmspec.runtime.rl)

What the algorithms compute is in lmspec/runtime/rl/ (one module each, docs/rl/); this file only
drives them. Forward passes run with dropout off (eval mode; gradients still flow), so the
importance ratio of the first update is exactly 1: the log-probs of a rollout and of its first
update come from the same function of the same weights.

With N processes (`distributed`) `per_step` and `minibatch` stay the step's and the update's
global counts: rank r takes the r-th N-th of the step's prompts (whole groups), samples with a
generator seeded by (seed, step, r), scores and measures its rollouts, and updates on
minibatch / N of its rows at a time. What the algorithms take over the whole batch (whitening)
is summed across the ranks; each rank's loss is its share of the global mean (divided by the
tokens or responses of all ranks), and DDP sums the gradients, so an update is that of the
global minibatch. The logged figures are the global batch's. A judge's scores are asked on
rank 0 for every rank (one writer of RUN/judgments/); a reward model scores on each rank.
Samples depend on the world size: the same spec at another N draws other rollouts.

`parallel: fsdp` shards the policy and the value model (FSDP2, `distributed.shard_model`)
instead of replicating them: the updates run sharded, while the rollouts and their no-grad
passes run on the policy gathered whole on every rank (`distributed.gathered`), so that each
rank generates until its own responses end. The reference and a reward model stay whole on
every rank. Checkpoints are written by every rank, its slices, and read at any world size.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from lmspec.runtime import distributed, engine
from lmspec.runtime.checkpoint import (ShardedTensors, gathered_model_state, load_model_state, load_optimizer,
                                       load_sharded_state, load_whole_state_sharded, optimizer_layout,
                                       optimizer_tensors, rng_state, save_weights, set_rng_state, sharded_state,
                                       tied_names, unique_state, write_json_atomic)
from lmspec.runtime.errors import RunError
from lmspec.runtime.stages.base import Stage, StageArtifacts
from lmspec.runtime.stages.feedback import generate_responses, prompt_prefixes, response_mask

__all__ = ["RLStage", "KLExploded"]


class KLExploded(RunError):
    pass


#: a mean per-sequence KL to the reference above this stops the stage (the policy has left the
#: reference behind: its samples are no longer text the reward was learned on)
KL_LIMIT = 50.0


class RLStage(Stage):
    kind = "rl"

    def __init__(self, plan, ctx):
        super().__init__(plan, ctx)
        s = self.spec
        self.total_steps, self.log_every = s.steps, s.log_every
        self.eval_every, self.checkpoint_every, self.keep_checkpoints = s.eval_every, s.checkpoint_every, \
            s.keep_checkpoints
        self.algorithm = s.algorithm
        self.group = {"ppo": 1, "grpo": getattr(s.algorithm, "group", 1), "rloo": getattr(s.algorithm, "k", 1)}[
            s.algorithm.kind]
        self.before: dict[str, float] | None = None  # the first evaluation, of the policy as it started

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        from lmspec.compiler.compile import build_stage_model
        from lmspec.runtime.rl import ALGORITHMS, kl_controller
        from lmspec.runtime.tokenizers import load_tokenizer

        s, plan, ctx = self.spec, self.plan, self.ctx
        self.world = distributed.world()
        self.per_rank, self.minibatch = distributed.split_rollouts(self.name, s, self.world.size)
        engine.seed_everything(s.seed)
        self.device = ctx.device
        self.precision = engine.resolve_precision(s.precision, self.device)
        artifacts = {k: a.weights for k, a in ctx.artifacts.items() if a.weights}
        source = ctx.artifacts.get(plan.init.stage) if plan.init and plan.init.stage else None
        with distributed.rank_zero_first():  # rank 0 saves the tokenizer and tokenises the prompts into the cache
            self.tokenizer = load_tokenizer(source.tokenizer) if source and source.tokenizer else \
                ctx.tokenizer(None)[0]
            prompts = prompt_prefixes(ctx, s.rollouts.prompts, self.tokenizer)
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        # the updates run in eval mode (dropout off), so checkpointing is asked for there too
        self.policy = build_stage_model(plan, device=self.device, artifacts=artifacts).checkpoint_activations(
            s.checkpoint_activations, in_eval=True).attention_kernel(s.attention_kernel)
        self.reference = self._reference(artifacts)
        # a judge answers on rank 0 for all ranks, the only writer of its cache; a reward model on each
        judged = ctx.report.spec.resolved.blocks[s.reward].kind == "judge"
        self.central = judged and self.world.size > 1
        self.reward = self._reward() if self.world.main or not judged else None
        from lmspec.runtime.judges.build import build_judge

        # evaluation runs on rank 0 alone (the replicas are identical)
        self.eval_judges = {name: build_judge(name, ctx) for name in s.eval_judges} if self.world.main else {}
        self.value = self._value_model() if s.algorithm.kind == "ppo" else None
        self.algo = ALGORITHMS[s.algorithm.kind]
        self.cfg = self._config()
        self.kl_ctl = kl_controller(self.cfg) if s.algorithm.kind == "ppo" else None
        n_eval = min(s.eval_prompts, max(1, len(prompts) // 10))
        if len(prompts) - n_eval < 1:
            raise RunError(f"stage '{self.name}': the rollout prompts hold {len(prompts)} prompts, too few to hold "
                           f"{n_eval} out for evaluation", help="raise prompts' count")
        self.eval_set, self.prompts = prompts[-n_eval:], prompts[:-n_eval]  # the last prompts are held out
        params = list(self.policy.parameters()) + (list(self.value.parameters()) if self.value is not None else [])
        self.params = [p for p in params if p.requires_grad]
        # what the optimizer and the checkpoints see: names `policy.*` and `value.*`
        self.both = torch.nn.ModuleDict({"policy": self.policy,
                                         **({"value": self.value} if self.value is not None else {})})
        self.tied = tied_names(self.both)
        self.optimizer = engine.make_optimizer(s.optimizer, self.both, self.device)
        self.policy.eval()  # dropout off: see the module docstring
        if self.value is not None:
            self.value.eval()
        self.train_policy, self.train_value = self.policy, self.value  # what the updates' forward passes call
        # `auto`: fsdp on GPUs the stage fits only sharded, else ddp; with one process nothing is wrapped
        self.parallel = distributed.resolve_parallel(ctx.report, self.name, s.parallel, self.device)
        self.sharded = self.parallel == "fsdp" and self.world.size > 1
        self.final_weights: dict[str, dict[str, torch.Tensor]] = {}
        if self.sharded:
            self._shard()
            if self.precision.dtype is not None and self.precision.device_type == "cuda":
                # FSDP's mixed precision computes with half-precision weights: so does the reference,
                # or the KL would start above 0 from rounding alone (and it takes half the memory)
                self.reference.to(self.precision.dtype)
        elif self.world.size > 1:
            self._data_parallel()

    def _data_parallel(self) -> None:
        """The policy (and PPO's value model) replicated with DDP, which sums their gradients
        across the ranks during backward: each rank's loss is already its share of the global
        mean (`_shares`). Parameters no loss reaches (a head the rl stage never reads) would
        make DDP wait for their gradients forever; they get none in one process either, so the
        optimizer never moves them: frozen first (after the optimizer was built, so its state
        keeps one process's layout)."""
        for p in self._unreached():
            p.requires_grad_(False)
        self.params = [p for p in self.params if p.requires_grad]
        self.train_policy = distributed.data_parallel(self.policy, self.device)
        if self.value is not None:
            self.train_value = distributed.data_parallel(self.value, self.device)

    def _shard(self) -> None:
        """The policy and the value model sharded (FSDP2), each as a train stage's model is,
        then the optimizer built on the shards. `layout`: the order a one-process optimizer
        numbers its state in, to read a single-process checkpoint into the shards. Parameters
        no loss reaches are frozen first, as for DDP."""
        self.layout = optimizer_layout(self.both, engine.param_groups(self.both, 0.0))
        for p in self._unreached_on_meta():
            p.requires_grad_(False)
        self.tied_models = {name: tied_names(m) for name, m in self.both.items()}
        for model in self.both.values():
            distributed.shard_model(model, self.device, self.precision)
        self.optimizer = engine.make_optimizer(self.spec.optimizer, self.both, self.device)
        self.params = [p for p in self.both.parameters() if p.requires_grad]

    def _unreached_on_meta(self) -> list[torch.nn.Parameter]:
        """`_unreached`, found on the meta device (`check`'s pass): a backward pass of the whole
        models before they are sharded would hold their whole gradients, more than a device of a
        stage that fits only sharded may have. The policy's loss reads its logits, the value
        model's its scalar head."""
        from lmspec.compiler.analysis import meta_pass
        from lmspec.compiler.costs import stage_seq_len, value_arch

        T = min(stage_seq_len(self.spec, self.plan.arch), 8)
        dec = T if self.plan.arch.arch == "encoder_decoder" else None
        models = [("policy", self.plan.arch, "logits")]
        if self.value is not None:
            models.append(("value", value_arch(self.plan.arch), "scores"))
        names = {f"{prefix}.{n}" for prefix, arch, read in models
                 for n in meta_pass(arch, batch=1, seq_len=T, decoder_seq_len=dec, reads=(read,)).unreached}
        return [p for name, p in self.both.named_parameters() if name in names and p.requires_grad]

    def _gathered(self):
        """The policy and value model whole on every rank for the rollouts and their no-grad
        passes (collective: every rank enters); nothing to do unless sharded."""
        return distributed.gathered(self.policy, self.value)

    def _unreached(self) -> list[torch.nn.Parameter]:
        """The trainable parameters of the policy and value model the loss has no gradient for,
        by one backward pass through the log-probs (and values) of a two-token sequence."""
        ids = self.prompts[0][:2].reshape(1, -1).to(self.device)
        if ids.shape[1] < 2:
            ids = ids.repeat(1, 2)
        mask, positions = torch.ones_like(ids, dtype=torch.bool), torch.arange(2, device=self.device).unsqueeze(0)
        lp, _ = self._logprobs(self.policy, ids, mask, positions, ids[:, 1:], mask[:, 1:])
        total = lp.sum() + (self._values(ids, mask, positions, 1).sum() if self.value is not None else 0.0)
        total.backward()
        unreached = [p for p in self.params if p.grad is None]
        for p in self.params:
            p.grad = None
        return unreached

    def _reference(self, artifacts):
        """The frozen model KL is measured against: `reference`, else the stage the policy starts from."""
        from lmspec.compiler.compile import build_stage_model

        ref_stage = self.spec.reference or (self.plan.init.stage if self.plan.init else None)
        plan = dataclasses.replace(self.plan, init=dataclasses.replace(self.plan.init, stage=ref_stage)) \
            if self.plan.init and ref_stage else self.plan
        model = build_stage_model(plan, device=self.device, artifacts=artifacts).eval()
        model.attention_kernel(self.spec.attention_kernel)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _reward(self):
        """The reward: a reward model's scalar head (a train stage), or a judge (direct RLAIF)."""
        from lmspec.runtime.judges.build import build_judge, stage_model
        from lmspec.runtime.judges.model import ModelJudge

        name = self.spec.reward
        kind = self.ctx.report.spec.resolved.blocks[name].kind
        if kind == "judge":
            return build_judge(name, self.ctx)  # its answers cached in RUN/judgments/
        stage = self.ctx.schedule[name]
        from lmspec.compiler.schema import ModelUse

        net, tok, arch, weights = stage_model(self.ctx, ModelUse(model=stage.model, stage=name),
                                              what=f"stage '{self.name}'", arch=stage.arch)
        net.attention_kernel(self.spec.attention_kernel)
        return ModelJudge(name, net, tok, score="scalar", context=arch.context, weights=weights, device=self.device)

    def _value_model(self):
        """PPO's value model: the policy's body with a scalar head, starting from the policy's weights."""
        from lmspec.compiler.build import build_model
        from lmspec.compiler.costs import value_arch

        model = build_model(value_arch(self.plan.arch), device=self.device).checkpoint_activations(
            self.spec.checkpoint_activations, in_eval=True).attention_kernel(self.spec.attention_kernel)
        body = {k: v for k, v in self.policy.state_dict().items() if not k.startswith(("lm_head", "mlm_head"))}
        model.load_state_dict(body, strict=False)
        return model

    def _config(self):
        from lmspec.runtime.rl import GRPOConfig, PPOConfig, RLOOConfig

        a, r = self.spec.algorithm, self.spec.rollouts
        if a.kind == "ppo":
            return PPOConfig(clip=a.clip, value_clip=a.value_clip, kl_coef=a.kl, gamma=a.gamma, gae_lambda=a.gae_lambda,
                             value_coef=a.value_coef, kl_target=a.kl_target, whiten_rewards=a.normalize_rewards)
        if a.kind == "grpo":
            return GRPOConfig(group_size=a.group, clip=a.clip, kl_coef=a.kl, kl_estimator=a.kl_estimator,
                              aggregation=a.loss, max_completion_length=r.max_new_tokens)
        return RLOOConfig(group_size=a.k, kl_coef=a.kl, clip=a.clip)

    # ------------------------------------------------------------------ rollouts

    def _prompts(self, i: int) -> list[torch.Tensor]:
        """This rank's prompts of step i, each `group` times: the rank-th share of the step's
        per_step // group prompts (all of them in one process)."""
        n, mine = self.spec.rollouts.per_step // self.group, self.per_rank // self.group
        start = i * n + self.world.rank * mine
        return [self.prompts[(start + j) % len(self.prompts)] for j in range(mine) for _ in range(self.group)]

    def _sequences(self, query, qmask, response, rmask):
        """[query; response] with its mask and positions (real tokens count from 0, as in generate)."""
        full = torch.cat([query, response], dim=1).to(self.device)
        mask = torch.cat([qmask, rmask], dim=1).to(self.device)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return full, mask, positions

    def _logprobs(self, model, full, mask, positions, response, rmask, *, entropy: bool = False):
        from lmspec.runtime.rl import sequence_logprobs
        from lmspec.runtime.rl import entropy as token_entropy

        P, R = full.shape[1] - response.shape[1], response.shape[1]
        with self.precision.autocast():
            out = model(full, attention_mask=mask, position_ids=positions)
        logits = out.logits[:, P - 1:P - 1 + R].float()  # (B, R, V): position P-1+t predicts response token t
        T = self.spec.rollouts.temperature
        lp = sequence_logprobs(logits, response.to(self.device), rmask.to(self.device), temperature=T)
        return lp, (token_entropy(logits, rmask.to(self.device), temperature=T) if entropy else None)

    def _values(self, full, mask, positions, R: int, model=None):
        with self.precision.autocast():
            hidden = (model or self.value)(full, attention_mask=mask, position_ids=positions).hidden
        P = full.shape[1] - R
        # the head runs outside autocast, in its weight's dtype: fp32, or FSDP's gathered bf16/fp16
        # (CUDA autocast leaves the final norm's output fp32)
        head = self.value.score
        return head(hidden[:, P - 1:P - 1 + R].to(head.weight.dtype)).squeeze(-1).float()  # (B, R): V(s_t)

    @torch.no_grad()
    def _rollout(self, prompts, gen, model=None):
        """Sample a response to each prompt with `model` (default the policy) at the rollout
        settings: (query, query mask, response, response mask, prompt texts, response texts)."""
        r = self.spec.rollouts
        query, qmask, response = generate_responses(model or self.policy, prompts, max_new_tokens=r.max_new_tokens,
                                                    temperature=r.temperature, top_k=r.top_k,
                                                    eos_id=self.tokenizer.eos_id, pad_id=self.pad_id, generator=gen,
                                                    device=self.device)
        rmask = response_mask(response, self.tokenizer.eos_id)
        texts = [self.tokenizer.decode(t[m].tolist()) for t, m in zip(response, rmask)]
        prompt_texts = [self.tokenizer.decode(p.tolist()) for p in prompts]
        return query, qmask, response, rmask, prompt_texts, texts

    def _score(self, prompt_texts, texts, i: int) -> torch.Tensor:
        """The rewards of this rank's rollouts. A judge's are asked on rank 0 for every rank's
        texts, in rank order (its cache has one writer), and each rank takes its share back."""
        if self.central:
            every = distributed.gather_json([prompt_texts, texts])
            scores = None
            if self.world.main:
                scores = self._ask([p for ps, _ in every for p in ps], [t for _, ts in every for t in ts], i).tolist()
            scores = distributed.broadcast_json(scores)
            lo = self.world.rank * len(texts)
            scores = torch.tensor(scores[lo:lo + len(texts)], dtype=torch.float32)
        else:
            scores = self._ask(prompt_texts, texts, i)
        bad, n = distributed.sum_over_ranks([float((~torch.isfinite(scores)).sum()), float(len(scores))])
        if bad:
            raise RunError(f"stage '{self.name}', step {i + 1}: the reward '{self.spec.reward}' is not finite for "
                           f"{int(bad)} of {int(n)} rollouts; the run stopped and keeps its last good checkpoint",
                           help="check the reward model's stage (was its loss finite?) or the judge")
        return scores

    def _ask(self, prompt_texts, texts, i: int) -> torch.Tensor:
        try:
            return self.reward.score(prompt_texts, texts).float()
        except RunError:
            raise
        except Exception as err:
            from lmspec.runtime.judges import JudgeError

            if isinstance(err, JudgeError):
                raise RunError(f"stage '{self.name}', step {i + 1}: {err}", help=err.help) from None
            raise

    # ------------------------------------------------------------------ a step

    def step(self, i: int) -> dict[str, float]:
        from lmspec.runtime.rl import RolloutBatch

        s, w = self.spec, self.world
        if self.before is None:  # the held-out reward of the policy as it starts, before any update
            with self._gathered():
                self.before = self._held_out(self.policy) if w.main else {}  # rank 0 evaluates for all
        prompts = self._prompts(i)
        gen = torch.Generator(device=self.device).manual_seed(engine.step_seed(s.seed, i, w.rank, salt=3))
        with self._gathered():  # each rank generates until its own responses end
            query, qmask, response, rmask, prompt_texts, texts = self._rollout(prompts, gen)
        scores = self._score(prompt_texts, texts, i).to(self.device)
        full, mask, positions = self._sequences(query, qmask, response, rmask)
        rmask_d = rmask.to(self.device)
        epochs = getattr(s.algorithm, "epochs", 1)
        B = len(prompts)  # this rank's rollouts
        mb = self.minibatch or B
        sequences = (full, mask, positions, response, rmask)
        with torch.no_grad():
            ref = _by_rows(mb, lambda *rows: self._logprobs(self.reference, *rows)[0], *sequences)
        live = None
        if epochs == 1 and mb >= B:
            # one update over the whole batch: its own log-probs (and values), detached, are the
            # rollout's — the same function of the same weights — so one forward pass is saved
            new, ent = self._logprobs(self.train_policy, full, mask, positions, response, rmask, entropy=True)
            new_values = self._values(full, mask, positions, response.shape[1], self.train_value) \
                if self.value is not None else None
            old, values = new.detach(), (None if new_values is None else new_values.detach())
            live = (new, ent, new_values)
        else:
            with torch.no_grad(), self._gathered():
                old = _by_rows(mb, lambda *rows: self._logprobs(self.policy, *rows)[0], *sequences)
                values = _by_rows(mb, lambda *rows: self._values(*rows[:3], response.shape[1]),
                                  *sequences) if self.value is not None else None
        if self.kl_ctl is not None:
            self.cfg = dataclasses.replace(self.cfg, kl_coef=self.kl_ctl.value)
        batch = RolloutBatch(query.to(self.device), qmask.to(self.device), response.to(self.device), rmask_d, old,
                             scores, ref_logprobs=ref, values=values)
        adv = self.algo.advantages(batch, self.cfg, reduce=self._reduce if w.size > 1 else None)
        kl_seq = ((old - ref) * rmask_d).sum(dim=1)  # (B,) k1 per sequence, summed over its tokens
        figures = self._figures(scores, kl_seq, rmask)
        kl = figures["kl"]
        if not math.isfinite(kl) or kl > KL_LIMIT:
            raise KLExploded(f"stage '{self.name}', step {i + 1}: the KL to the reference exploded ({kl:.3g} nats per "
                             f"sequence, limit {KL_LIMIT:g}); the run stopped and keeps its last good checkpoint",
                             help="lower the learning rate or raise the KL coefficient (`kl`), then resume with "
                                  f"`lmspec run --resume {self.ctx.run_path} --force --set {self.name}.KEY=VALUE`")
        lr = engine.lr_at(i, s.schedule, s.optimizer.lr, s.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        order_gen = engine.micro_generator(s.seed, i, w.rank, salt=4)
        updates = []  # the rows of each update, every epoch's minibatches in order
        for _ in range(epochs):
            order = torch.randperm(B, generator=order_gen) if mb < B else torch.arange(B)
            updates += [order[start:start + mb] for start in range(0, B, mb)]
        sums: dict[str, float] = {}
        for idx, share in zip(updates, self._shares(updates, rmask)):
            loss, metrics = self._update(batch, adv, full, mask, positions, idx.to(self.device), share, live=live)
            for k, v in metrics.items():  # weighed by this rank's share of the update, as its loss is
                sums[k] = sums.get(k, 0.0) + float(v) * share
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
        if self.kl_ctl is not None:
            self.kl_ctl.update(kl, figures["rollouts"])
        keys = list(sums)  # the same keys in the same order on every rank
        out = {k: v / max(len(updates), 1) for k, v in zip(keys, distributed.sum_over_ranks([sums[k] for k in keys]))}
        out.update(reward=figures["reward"], reward_std=figures["reward_std"], kl=kl,
                   response_length=figures["response_length"], lr=lr, tokens=figures["tokens"])
        if self.kl_ctl is not None:
            out["kl_coef"] = self.cfg.kl_coef
        return out

    @staticmethod
    def _reduce(t: torch.Tensor) -> torch.Tensor:
        """A 1-d tensor summed over the ranks (float64): the algorithms' whole-batch statistics."""
        return torch.tensor(distributed.sum_over_ranks(t.tolist()), dtype=torch.float64, device=t.device)

    def _figures(self, scores, kl_seq, rmask) -> dict[str, float]:
        """The step's figures over the rollouts of every rank: reward mean and (Bessel-corrected)
        std, per-sequence KL, response length, tokens; two passes, as one process computes them."""
        n, total, kl_total, tokens = distributed.sum_over_ranks(
            [float(len(scores)), float(scores.double().sum()), float(kl_seq.double().sum()), float(rmask.sum())])
        mean = total / n
        squares = distributed.sum_over_ranks([float(((scores.double() - mean) ** 2).sum())])[0]
        return {"rollouts": int(n), "reward": mean, "reward_std": math.sqrt(squares / (n - 1)) if n > 1 else 0.0,
                "kl": kl_total / n, "response_length": tokens / n, "tokens": int(tokens)}

    def _shares(self, updates, rmask) -> list[float]:
        """Each update's share on this rank of what the loss is a mean over (real tokens or
        responses, `Algorithm.loss_units`), counted on every rank: 1 in one process."""
        tokens = self.algo.loss_units(self.cfg) == "tokens"
        here = [float(rmask[idx].sum()) if tokens else float(len(idx)) for idx in updates]
        return [h / total for h, total in zip(here, distributed.sum_over_ranks(here))]

    def _update(self, batch, adv, full, mask, positions, idx, share: float, *, live=None):
        """One optimizer update on rows `idx`, whose loss (a mean over them) is multiplied by
        their `share` of the update on all ranks, so that the ranks' losses add up to the global
        mean; `live`: the (log-probs, entropy, values) of the whole batch already computed with
        gradients (a single update per step). Returns the scaled loss and the unscaled metrics."""
        from lmspec.runtime.rl import RolloutBatch

        if live is not None:
            new, ent, values = live
            loss, metrics = self.algo.loss(new, values, batch, adv, self.cfg, entropy=ent)
            return self._apply(loss * share if share != 1.0 else loss, metrics)

        def pick(t):
            return None if t is None else t[idx]

        sub = RolloutBatch(batch.query_tokens[idx], batch.query_mask[idx], batch.response_tokens[idx],
                           batch.response_mask[idx], batch.old_logprobs[idx], batch.scores[idx],
                           ref_logprobs=pick(batch.ref_logprobs), values=pick(batch.values))
        sub_adv = dataclasses.replace(adv, per_token=adv.per_token[idx], returns=pick(adv.returns),
                                      per_sequence=pick(adv.per_sequence),
                                      rewards=None if adv.rewards is None else adv.rewards[idx])
        new, ent = self._logprobs(self.train_policy, full[idx], mask[idx], positions[idx], sub.response_tokens,
                                  sub.response_mask, entropy=True)
        values = None if self.value is None else \
            self._values(full[idx], mask[idx], positions[idx], sub.response_tokens.shape[1], self.train_value)
        loss, metrics = self.algo.loss(new, values, sub, sub_adv, self.cfg, entropy=ent)
        return self._apply(loss * share if share != 1.0 else loss, metrics)

    def _apply(self, loss, metrics):
        if distributed.any_rank(not bool(torch.isfinite(loss))):  # every rank stops at the same update
            raise RunError(f"stage '{self.name}': a non-finite loss ({float(loss)}); the run stopped and keeps its last "
                           "good checkpoint", help="lower the learning rate")
        loss.backward()  # with DDP the ranks' gradients are summed: their shares add up to the global mean
        if self.spec.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.spec.clip_grad)
        self.optimizer.step()
        # dropped right after the step, not before the next backward: DDP rebuilds its buckets at
        # the second update's forward, and gradients still held then would keep the old bucket
        # beside the new one (two copies); none are held between updates (distributed.data_parallel)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), metrics

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The reward of the held-out prompts' samples (fixed seed), and the same for the policy
        as it started (`before_*`, measured once and kept in the checkpoint)."""
        # sharded, every rank is here and gathers the weights; replicated, rank 0 alone: it evaluates for all
        with self._gathered():
            result = self._held_out(self.policy) if self.world.main else {}
        result.update({f"before_{k}": v for k, v in self.before.items()})
        return result

    def _held_out(self, model) -> dict[str, float]:
        gen = torch.Generator(device=self.device).manual_seed(engine.step_seed(self.spec.seed, 0, salt=5))
        _, _, _, rmask, prompts, texts = self._rollout(self.eval_set, gen, model)
        scores = self.reward.score(prompts, texts).float()
        self._last_eval = list(zip(prompts, texts, scores.tolist()))
        out = {"eval_reward": float(scores.mean()), "eval_response_length": float(rmask.sum()) / len(texts)}
        for name, judge in self.eval_judges.items():
            s = judge.score(prompts, texts)
            out[f"eval_{name}"] = float(s.mean())
            if getattr(judge, "how", None) == "probability":  # the share the judge calls its class
                out[f"eval_{name}_share"] = float((s > 0).double().mean())
        return out

    def samples(self, i: int) -> list[dict]:
        rows = getattr(self, "_last_eval", [])[: self.spec.samples]
        return [{"prompt": p, "text": t, "reward": r} for p, t, r in rows]

    # ------------------------------------------------------------------ state

    def state_dict(self):
        """Replicas are identical, so rank 0 writes one process's models and optimizer; sharded
        models are written by every rank, its slices. Any number of processes resumes from either."""
        if self.sharded:
            tensors, opt_meta = sharded_state(self.both, self.optimizer, self.tied)
        else:
            opt_tensors, opt_meta = optimizer_tensors(self.optimizer)
            tensors = {"policy": unique_state(self.policy), "optimizer": opt_tensors}
            if self.value is not None:
                tensors["value"] = unique_state(self.value)
        state = {"rng": rng_state(), "optimizer": opt_meta, "before": self.before,
                 "kl_coef": None if self.kl_ctl is None else self.kl_ctl.value}
        return tensors, state

    def load_state_dict(self, tensors, state) -> None:
        where = f"the checkpoint of stage '{self.name}'"
        if isinstance(tensors, ShardedTensors):  # written sharded: read into any sharding (DCP reshards)
            load_sharded_state(self.both, self.optimizer, tensors, state["optimizer"], self.tied, where)
        elif self.sharded:  # written by one process (or DDP's rank 0): each rank keeps its slices
            if any(name not in tensors for name in self.both):
                raise RunError(f"{where} holds no {' or '.join(n for n in self.both if n not in tensors)} weights",
                               help="the run's spec changed since the checkpoint; start the stage afresh")
            whole = {"model": {f"{name}.{k}": v for name in self.both for k, v in tensors[name].items()},
                     "optimizer": tensors.get("optimizer", {})}
            load_whole_state_sharded(self.both, self.optimizer, whole, state["optimizer"], self.tied, self.layout,
                                     where)
        else:
            load_model_state(self.policy, tensors["policy"], where)
            if self.value is not None:
                load_model_state(self.value, tensors["value"], f"{where} (value model)")
            load_optimizer(self.optimizer, tensors.get("optimizer", {}), state["optimizer"])
        set_rng_state(state["rng"])
        self.before = state.get("before")
        if self.kl_ctl is not None and state.get("kl_coef") is not None:
            self.kl_ctl.value = state["kl_coef"]

    def consolidate(self) -> None:
        """Called on every rank before rank 0 writes the artifacts: sharded models' weights
        gathered onto rank 0, for the single-process weights files."""
        if self.sharded:
            self.final_weights = {name: gathered_model_state(m, self.tied_models[name])
                                  for name, m in self.both.items()}

    def artifacts(self, directory: Path) -> StageArtifacts:
        from lmspec.compiler.arch import arch_to_dict

        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self.policy, directory / "model.safetensors", metadata={"stage": self.name},
                     state=self.final_weights.get("policy"))
        write_json_atomic(directory / "arch.json", arch_to_dict(self.plan.arch))
        self.tokenizer.save(directory / "tokenizer")
        files = {"weights": directory / "model.safetensors", "arch": directory / "arch.json",
                 "tokenizer": directory / "tokenizer"}
        if self.value is not None:
            save_weights(self.value, directory / "value.safetensors", metadata={"stage": self.name},
                         state=self.final_weights.get("value"))
            files["value"] = directory / "value.safetensors"
        return StageArtifacts(files, self.plan.model)


def _by_rows(n: int, fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn(*rows) over `n` rows of `tensors` at a time, concatenated. The no-grad scoring passes of
    a step's rollouts run a minibatch at a time: they hold the logits of `n` rows (n x T x V),
    never of all of them, so their peak stays under an update's, which `check` counts."""
    B = tensors[0].shape[0]
    if n >= B:
        return fn(*tensors)
    return torch.cat([fn(*(t[start:start + n] for t in tensors)) for start in range(0, B, n)])

