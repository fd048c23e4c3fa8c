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
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from lmspec.runtime import engine
from lmspec.runtime.checkpoint import (load_model_state, load_optimizer, optimizer_tensors, rng_state, save_weights,
                                       set_rng_state, unique_state, write_json_atomic)
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
        engine.seed_everything(s.seed)
        self.device = ctx.device
        self.precision = engine.resolve_precision(s.precision, self.device)
        artifacts = {k: a.weights for k, a in ctx.artifacts.items() if a.weights}
        source = ctx.artifacts.get(plan.init.stage) if plan.init and plan.init.stage else None
        self.tokenizer = load_tokenizer(source.tokenizer) if source and source.tokenizer else ctx.tokenizer(None)[0]
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        self.policy = build_stage_model(plan, device=self.device, artifacts=artifacts)
        self.reference = self._reference(artifacts)
        self.reward = self._reward()
        from lmspec.runtime.judges.build import build_judge

        self.eval_judges = {name: build_judge(name, ctx) for name in s.eval_judges}
        self.value = self._value_model() if s.algorithm.kind == "ppo" else None
        self.algo = ALGORITHMS[s.algorithm.kind]
        self.cfg = self._config()
        self.kl_ctl = kl_controller(self.cfg) if s.algorithm.kind == "ppo" else None
        prompts = prompt_prefixes(ctx, s.rollouts.prompts, self.tokenizer)
        n_eval = min(s.eval_prompts, max(1, len(prompts) // 10))
        if len(prompts) - n_eval < 1:
            raise RunError(f"stage '{self.name}': the rollout prompts hold {len(prompts)} prompts, too few to hold "
                           f"{n_eval} out for evaluation", help="raise prompts' count")
        self.eval_set, self.prompts = prompts[-n_eval:], prompts[:-n_eval]  # the last prompts are held out
        params = list(self.policy.parameters()) + (list(self.value.parameters()) if self.value is not None else [])
        self.params = [p for p in params if p.requires_grad]
        both = torch.nn.ModuleDict({"policy": self.policy, **({"value": self.value} if self.value is not None else {})})
        self.optimizer = engine.make_optimizer(s.optimizer, both, self.device)
        self.policy.eval()  # dropout off: see the module docstring
        if self.value is not None:
            self.value.eval()

    def _reference(self, artifacts):
        """The frozen model KL is measured against: `reference`, else the stage the policy starts from."""
        from lmspec.compiler.compile import build_stage_model

        ref_stage = self.spec.reference or (self.plan.init.stage if self.plan.init else None)
        plan = dataclasses.replace(self.plan, init=dataclasses.replace(self.plan.init, stage=ref_stage)) \
            if self.plan.init and ref_stage else self.plan
        model = build_stage_model(plan, device=self.device, artifacts=artifacts).eval()
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
            return build_judge(name, self.ctx)
        stage = self.ctx.schedule[name]
        from lmspec.compiler.schema import ModelUse

        net, tok, arch, weights = stage_model(self.ctx, ModelUse(model=stage.model, stage=name),
                                              what=f"stage '{self.name}'", arch=stage.arch)
        return ModelJudge(name, net, tok, score="scalar", context=arch.context, weights=weights, device=self.device)

    def _value_model(self):
        """PPO's value model: the policy's body with a scalar head, starting from the policy's weights."""
        from lmspec.compiler.arch import HeadConfig
        from lmspec.compiler.build import build_model

        arch = dataclasses.replace(self.plan.arch, heads=(HeadConfig("scalar", pool="last"),), tie_embeddings=False)
        model = build_model(arch, device=self.device)
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
        n = self.spec.rollouts.per_step // self.group
        start = i * n
        return [self.prompts[(start + j) % len(self.prompts)] for j in range(n) for _ in range(self.group)]

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

    def _values(self, full, mask, positions, R: int):
        with self.precision.autocast():
            hidden = self.value(full, attention_mask=mask, position_ids=positions).hidden
        P = full.shape[1] - R
        return self.value.score(hidden[:, P - 1:P - 1 + R]).squeeze(-1).float()  # (B, R): V(s_t)

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
        try:
            scores = self.reward.score(prompt_texts, texts).float()
        except RunError:
            raise
        except Exception as err:
            from lmspec.runtime.judges import JudgeError

            if isinstance(err, JudgeError):
                raise RunError(f"stage '{self.name}', step {i + 1}: {err}", help=err.help) from None
            raise
        if not bool(torch.isfinite(scores).all()):
            bad = int((~torch.isfinite(scores)).sum())
            raise RunError(f"stage '{self.name}', step {i + 1}: the reward '{self.spec.reward}' is not finite for {bad} "
                           f"of {len(scores)} rollouts; the run stopped and keeps its last good checkpoint",
                           help="check the reward model's stage (was its loss finite?) or the judge")
        return scores

    # ------------------------------------------------------------------ a step

    def step(self, i: int) -> dict[str, float]:
        from lmspec.runtime.rl import RolloutBatch

        s = self.spec
        if self.before is None:  # the held-out reward of the policy as it starts, before any update
            self.before = self._held_out(self.policy)
        prompts = self._prompts(i)
        gen = torch.Generator(device=self.device).manual_seed(engine.step_seed(s.seed, i, salt=3))
        query, qmask, response, rmask, prompt_texts, texts = self._rollout(prompts, gen)
        scores = self._score(prompt_texts, texts, i).to(self.device)
        full, mask, positions = self._sequences(query, qmask, response, rmask)
        rmask_d = rmask.to(self.device)
        with torch.no_grad():
            ref, _ = self._logprobs(self.reference, full, mask, positions, response, rmask)
        epochs = getattr(s.algorithm, "epochs", 1)
        live = None
        if epochs == 1 and (s.minibatch or len(prompts)) >= len(prompts):
            # one update over the whole batch: its own log-probs (and values), detached, are the
            # rollout's — the same function of the same weights — so one forward pass is saved
            new, ent = self._logprobs(self.policy, full, mask, positions, response, rmask, entropy=True)
            new_values = self._values(full, mask, positions, response.shape[1]) if self.value is not None else None
            old, values = new.detach(), (None if new_values is None else new_values.detach())
            live = (new, ent, new_values)
        else:
            with torch.no_grad():
                old, _ = self._logprobs(self.policy, full, mask, positions, response, rmask)
                values = self._values(full, mask, positions, response.shape[1]) if self.value is not None else None
        if self.kl_ctl is not None:
            self.cfg = dataclasses.replace(self.cfg, kl_coef=self.kl_ctl.value)
        batch = RolloutBatch(query.to(self.device), qmask.to(self.device), response.to(self.device), rmask_d, old,
                             scores, ref_logprobs=ref, values=values)
        adv = self.algo.advantages(batch, self.cfg)
        kl_seq = ((old - ref) * rmask_d).sum(dim=1)  # (B,) k1 per sequence, summed over its tokens
        kl = float(kl_seq.mean())
        if not math.isfinite(kl) or kl > KL_LIMIT:
            raise KLExploded(f"stage '{self.name}', step {i + 1}: the KL to the reference exploded ({kl:.3g} nats per "
                             f"sequence, limit {KL_LIMIT:g}); the run stopped and keeps its last good checkpoint",
                             help="lower the learning rate or raise the KL coefficient (`kl`), then resume with "
                                  f"`lmspec run --resume {self.ctx.run_path} --force --set {self.name}.KEY=VALUE`")
        lr = engine.lr_at(i, s.schedule, s.optimizer.lr, s.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        updates = 0
        B = batch.batch_size
        mb = s.minibatch or B
        order_gen = engine.micro_generator(s.seed, i, 0, salt=4)
        for _ in range(epochs):
            order = torch.randperm(B, generator=order_gen) if mb < B else torch.arange(B)
            for start in range(0, B, mb):
                idx = order[start:start + mb].to(self.device)
                loss, metrics = self._update(batch, adv, full, mask, positions, idx, live=live)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                sums["loss"] = sums.get("loss", 0.0) + float(loss)
                updates += 1
        if self.kl_ctl is not None:
            self.kl_ctl.update(kl, B)
        out = {k: v / max(updates, 1) for k, v in sums.items()}
        out.update(reward=float(scores.mean()), reward_std=float(scores.std()) if B > 1 else 0.0, kl=kl,
                   response_length=float(rmask.sum()) / B, lr=lr, tokens=int(rmask.sum()))
        if self.kl_ctl is not None:
            out["kl_coef"] = self.cfg.kl_coef
        return out

    def _update(self, batch, adv, full, mask, positions, idx, *, live=None):
        """One optimizer update on rows `idx`; `live`: the (log-probs, entropy, values) of the whole
        batch already computed with gradients (a single update per step)."""
        from lmspec.runtime.rl import RolloutBatch

        if live is not None:
            new, ent, values = live
            loss, metrics = self.algo.loss(new, values, batch, adv, self.cfg, entropy=ent)
            return self._apply(loss, metrics)

        def pick(t):
            return None if t is None else t[idx]

        sub = RolloutBatch(batch.query_tokens[idx], batch.query_mask[idx], batch.response_tokens[idx],
                           batch.response_mask[idx], batch.old_logprobs[idx], batch.scores[idx],
                           ref_logprobs=pick(batch.ref_logprobs), values=pick(batch.values))
        sub_adv = dataclasses.replace(adv, per_token=adv.per_token[idx], returns=pick(adv.returns),
                                      per_sequence=pick(adv.per_sequence),
                                      rewards=None if adv.rewards is None else adv.rewards[idx])
        new, ent = self._logprobs(self.policy, full[idx], mask[idx], positions[idx], sub.response_tokens,
                                  sub.response_mask, entropy=True)
        values = self._values(full[idx], mask[idx], positions[idx], sub.response_tokens.shape[1]) \
            if self.value is not None else None
        loss, metrics = self.algo.loss(new, values, sub, sub_adv, self.cfg, entropy=ent)
        return self._apply(loss, metrics)

    def _apply(self, loss, metrics):
        if not bool(torch.isfinite(loss)):
            raise RunError(f"stage '{self.name}': a non-finite loss ({float(loss)}); the run stopped and keeps its last "
                           "good checkpoint", help="lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.spec.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.spec.clip_grad)
        self.optimizer.step()
        return loss.detach(), metrics

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The reward of the held-out prompts' samples (fixed seed), and the same for the policy
        as it started (`before_*`, measured once and kept in the checkpoint)."""
        result = self._held_out(self.policy)
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
        opt_tensors, opt_meta = optimizer_tensors(self.optimizer)
        tensors = {"policy": unique_state(self.policy), "optimizer": opt_tensors}
        if self.value is not None:
            tensors["value"] = unique_state(self.value)
        state = {"rng": rng_state(), "optimizer": opt_meta, "before": self.before,
                 "kl_coef": None if self.kl_ctl is None else self.kl_ctl.value}
        return tensors, state

    def load_state_dict(self, tensors, state) -> None:
        load_model_state(self.policy, tensors["policy"], f"the checkpoint of stage '{self.name}'")
        if self.value is not None:
            load_model_state(self.value, tensors["value"], f"the checkpoint of stage '{self.name}' (value model)")
        load_optimizer(self.optimizer, tensors.get("optimizer", {}), state["optimizer"])
        set_rng_state(state["rng"])
        self.before = state.get("before")
        if self.kl_ctl is not None and state.get("kl_coef") is not None:
            self.kl_ctl.value = state["kl_coef"]

    def artifacts(self, directory: Path) -> StageArtifacts:
        from lmspec.compiler.arch import arch_to_dict

        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self.policy, directory / "model.safetensors", metadata={"stage": self.name})
        write_json_atomic(directory / "arch.json", arch_to_dict(self.plan.arch))
        self.tokenizer.save(directory / "tokenizer")
        files = {"weights": directory / "model.safetensors", "arch": directory / "arch.json",
                 "tokenizer": directory / "tokenizer"}
        if self.value is not None:
            save_weights(self.value, directory / "value.safetensors", metadata={"stage": self.name})
            files["value"] = directory / "value.safetensors"
        return StageArtifacts(files, self.plan.model)
