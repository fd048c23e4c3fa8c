"""A `train` stage: a model, a (weighted sum of) objective(s), data, an optimizer.

Every random choice of a step is a function of (seed, step): the examples are positions
`step * batch ...` of the seed-shuffled stream, masks and pairs come from `micro_generator`,
and dropout from the global generator whose state the checkpoint saves. So a resumed run
computes exactly the steps the uninterrupted run would have.

With N processes (`distributed`), `batch` stays the global batch of one optimizer step: rank r
takes micro-batches m*N + r of the step's N x grad_accum micro-batches, each drawn with that
index's generator, so N processes with grad_accum A compute what one process computes with
grad_accum N x A (and, for objectives without random masks, what it computes with A).

With `parallel: fsdp` and several processes the model is sharded (FSDP2): each rank keeps its
slices of the weights, gradients and optimizer state; the batch is split as for DDP. Evaluation
and samples then run on every rank in step (each forward gathers the weights), checkpoints
are written by every rank (`checkpoint.Sharded`), and the final weights are gathered into one
file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmspec.compiler.compile import build_stage_model
from lmspec.runtime import distributed, engine
from lmspec.runtime.checkpoint import (ShardedTensors, gathered_model_state, load_model_state, load_optimizer,
                                       load_sharded_state, load_whole_state_sharded, optimizer_layout,
                                       optimizer_tensors, rng_state, save_weights, set_rng_state, sharded_state,
                                       tied_names, unique_state, write_json_atomic)
from lmspec.runtime.errors import RunError
from lmspec.runtime.objectives import Context, build_objective, compose
from lmspec.runtime.stages.base import Stage, StageArtifacts

__all__ = ["TrainStage", "NonFiniteLoss"]


class NonFiniteLoss(RunError):
    pass


class TrainStage(Stage):
    kind = "train"

    def __init__(self, plan, ctx):
        super().__init__(plan, ctx)
        s = self.spec
        self.total_steps, self.log_every = s.steps, s.log_every
        self.eval_every, self.checkpoint_every = s.eval_every, s.checkpoint_every
        self.keep_checkpoints = s.keep_checkpoints
        self.steps_done = 0
        self.skipped = 0  # consecutive fp16 steps the grad scaler skipped (overflow)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        s, plan, ctx = self.spec, self.plan, self.ctx
        self.world = distributed.world()
        # `auto`: fsdp on GPUs the stage fits only sharded, else ddp; with one process nothing is wrapped
        self.parallel = distributed.resolve_parallel(ctx.report, self.name, s.parallel, ctx.device)
        self.sharded = self.parallel == "fsdp" and self.world.size > 1
        self.micro = distributed.split_batch(s.batch, s.grad_accum, self.world.size, stage=self.name)
        self.eval_micro = s.batch // s.grad_accum  # evaluation runs in one process's batches
        engine.seed_everything(s.seed)
        self.device = ctx.device
        self.precision = engine.resolve_precision(s.precision, self.device)
        with distributed.rank_zero_first():  # rank 0 writes the tokenizer and the data cache; the others read them
            self._setup_tokens_and_data()
        self.model = self._build_model(plan).checkpoint_activations(s.checkpoint_activations).attention_kernel(
            s.attention_kernel)
        self.reference = None
        if any(getattr(obj, "needs_reference", False) for _, obj in self.terms):  # dpo: the model as it starts
            import copy

            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self.model.train()
        self.tied = tied_names(self.model)
        self.ddp = None
        if self.sharded:
            self._shard()
        else:
            self.optimizer = engine.make_optimizer(s.optimizer, self.model, self.device)
            self.ddp = self._data_parallel() if self.world.size > 1 else None
        replica = self.ddp if self.ddp is not None else self.model
        self.forward_model = torch.compile(replica) if s.compile else replica
        sharded_fp16 = self.sharded and self.precision.name == "fp16"
        self.scaler = distributed.sharded_grad_scaler() if sharded_fp16 else self.precision.scaler()
        self.final_weights: dict[str, torch.Tensor] | None = None

    def _setup_tokens_and_data(self) -> None:
        s, plan, ctx = self.spec, self.plan, self.ctx
        self.tokenizer, self.tokenizer_name = ctx.tokenizer(s.tokenizer)
        arch = plan.arch
        if self.tokenizer.vocab_size > arch.vocab:
            raise RunError(f"tokenizer '{self.tokenizer_name}' produces {self.tokenizer.vocab_size} ids, but model "
                           f"'{plan.model}' has vocab {arch.vocab}", help=f"use vocab: {self.tokenizer_name}.vocab_size")
        self.seq_len = s.seq_len or arch.context  # check (LMS089) saw to it that it fits the context
        tok = self.tokenizer
        # an encoder-decoder's decoder starts from the model's decoder_start_id (BART: 2), else
        # from the tokenizer's pad (T5), as generate starts it (LMS111: a model's pad_id is that pad)
        start = next((i for i in (arch.decoder_start_id, tok.pad_id) if i is not None), 0)
        self.octx = Context(seq_len=self.seq_len, vocab_size=tok.vocab_size, specials=dict(tok.specials), arch=arch.arch,
                            sentinels=list(tok.sentinels), decoder_start_id=start)
        self.terms = compose([(t.weight, build_objective(t.objective, self.octx)) for t in s.objective])
        reads = self.terms[0][1].reads
        if reads.kind == "pairs":
            self._setup_pairs()
        else:
            self._setup_data(reads)

    def _data_parallel(self):
        """The model replicated on every rank (DDP). Parameters the stage's loss never reaches
        (LMS096: a head no objective reads) would make DDP wait for their gradients forever;
        they get no gradient in one process either, so the optimizer never touches them: freeze
        them (after the optimizer was built, so its state keeps one process's layout). Then
        each rank draws its own dropout masks."""
        for p in self._unreached_parameters():
            p.requires_grad_(False)
        ddp = distributed.data_parallel(self.model, self.device, accumulates=self.spec.grad_accum > 1)
        engine.seed_everything(engine.step_seed(self.spec.seed, 0, 0, salt=2 + self.world.rank))
        return ddp

    def _shard(self) -> None:
        """FSDP2 (`parallel: fsdp`): the model sharded across the ranks, then the optimizer built
        on the shards (fully_shard replaces the parameters). Parameters the loss never reaches
        are frozen first, as for DDP. `layout` is the order a one-process optimizer numbers its
        state in, to read a single-process checkpoint into the shards."""
        self.layout = optimizer_layout(self.model, engine.param_groups(self.model, 0.0))
        for p in self._unreached_parameters():
            p.requires_grad_(False)
        distributed.shard_model(self.model, self.device, self.precision)
        self.optimizer = engine.make_optimizer(self.spec.optimizer, self.model, self.device)
        engine.seed_everything(engine.step_seed(self.spec.seed, 0, 0, salt=2 + self.world.rank))

    def _unreached_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters the stage's loss never reaches (a head no objective reads,
        LMS096): the meta-device pass of `check` finds them, on the meta device, so that finding
        them costs no memory (a backward pass of the whole model, before it is sharded, would
        need more than a device of a stage that fits only sharded)."""
        from lmspec.compiler.analysis import meta_pass
        from lmspec.compiler.costs import LOSS_READS

        reads = tuple(sorted({LOSS_READS[t.objective.kind] for t in self.spec.objective}))
        T = min(self.seq_len, 8)
        dec = T if self.plan.arch.arch == "encoder_decoder" else None
        result = meta_pass(self.plan.arch, batch=1, seq_len=T, decoder_seq_len=dec, reads=reads)
        if result.problems:  # `check` ran the same pass at the stage's own shapes and passed
            raise RunError(f"stage '{self.name}': the meta-device pass failed: {result.problems[0]}",
                           help="this is a bug in lmspec; please report it")
        unreached = set(result.unreached)
        return [p for name, p in self.model.named_parameters() if name in unreached and p.requires_grad]

    def _build_model(self, plan):
        from lmspec.compiler.hf.errors import HFError

        try:
            return build_stage_model(plan, device=self.device,
                                     artifacts={k: a.weights for k, a in self.ctx.artifacts.items() if a.weights})
        # init: hf(...) or a stage's weights that do not fit; HFError: what only the values show
        # (BART's final_logits_bias not all zero), which `check` reads no further than the headers
        except (OSError, ValueError, HFError) as err:
            raise RunError(f"stage '{self.name}' cannot load its initial weights: {err}",
                           help="run `lmspec check` on the spec; describe a checkpoint with `lmspec import-hf DIR`") \
                from None

    def _setup_pairs(self) -> None:
        """The preference set a feedback stage collected (`data: prefs`)."""
        from lmspec.runtime.data.preferences import PairStream, read_pairs

        s = self.spec
        source = self.ctx.artifacts.get(s.data)
        if source is None or "preferences" not in source.files:
            raise RunError(f"stage '{self.name}' reads the preference set of stage '{s.data}', which has not produced it",
                           help=f"run stage '{s.data}' first")
        train, validation = read_pairs(source.files["preferences"], self.tokenizer, source=s.data)
        self.dataset = None
        for split in (train, validation):  # found before step 1, not at the step that draws the pair
            longest = max((len(e["prompt"]) + max(len(e["a"]), len(e["b"])) for e in split), default=0)
            if longest > self.seq_len:
                raise RunError(f"the preference set of '{s.data}' ({split.name} split) holds pairs of up to {longest} "
                               f"tokens, longer than stage '{self.name}' feeds (seq_len {self.seq_len})",
                               help="raise seq_len (and the model's context), or collect shorter responses")
        self.train_stream = PairStream(train, seed=s.seed)
        self.val_stream = PairStream(validation, seed=s.seed, shuffle=False) if validation else None
        if self.val_stream is None:
            self.ctx.log(f"stage {self.name}: the preference set of '{s.data}' holds no validation pairs; the stage "
                         "reports training loss only (raise the feedback stage's `validation`)")

    def _setup_data(self, reads) -> None:
        from lmspec.runtime.data import ExampleStream, prepare_dataset

        s, ctx, tok = self.spec, self.ctx, self.tokenizer
        data_spec = ctx.report.spec.blocks[s.data]
        label = None
        if reads.kind == "records":
            label = reads.label
        spec_file = ctx.report.spec.resolved.blocks[s.data].span.file
        self.dataset = prepare_dataset(data_spec, name=s.data, spec_file=spec_file, tokenizer=tok,
                                       fields=reads.fields if reads.kind == "records" else ("text",), label=label,
                                       cache_dir=ctx.cache_dir)
        self._check_lengths(reads)
        self._check_labels()
        self.train_stream = ExampleStream(self.dataset.train, reads, seed=data_spec.seed, shuffle=data_spec.shuffle)
        self.val_stream = None
        val = self.dataset.validation
        if len(val) and (reads.kind != "windows" or val.n_tokens() >= reads.length):
            self.val_stream = ExampleStream(val, reads, seed=data_spec.seed, shuffle=False)
        elif len(val):
            ctx.log(f"stage {self.name}: the validation split of '{s.data}' holds {val.n_tokens()} tokens, fewer than "
                    f"one sequence ({reads.length}); the stage will not be evaluated (raise `validation`)")
        else:
            ctx.log(f"stage {self.name}: data '{s.data}' has no validation split (validation: 0); the stage reports "
                    "training loss only")
        self.octx.random_document = self.train_stream.random_document

    def _check_lengths(self, reads) -> None:
        """Records and documents longer than the model's context are found before step 1, not at
        the step that draws them."""
        if reads.kind == "windows":
            return
        obj = self.terms[0][1]
        for split_name, split in (("train", self.dataset.train), ("validation", self.dataset.validation)):
            if not len(split):
                continue
            fields = reads.fields if reads.kind == "records" else ("text",)
            needed = obj.needed_length({f: split.lengths(f) for f in fields})
            over = (needed > self.seq_len).nonzero()[0]  # needed_length counts input positions
            if len(over):
                longest = int(needed[over].max())
                raise RunError(f"data '{self.spec.data}' ({split_name} split) holds {len(over)} "
                               f"example{'s' if len(over) > 1 else ''} longer than stage '{self.name}' feeds: up to "
                               f"{longest} tokens, and seq_len is {self.seq_len}",
                               help="raise seq_len (and the model's context), or shorten those examples")

    def _check_labels(self) -> None:
        """Class labels at or above the classifier's classes are found before step 1, not as
        an IndexError at the step that draws one (docs/keys.md, GAP 10)."""
        head = self.plan.arch.head("classifier") if self.plan.arch is not None else None
        if head is None or self.dataset.train.label is None:
            return
        for split_name, split in (("train", self.dataset.train), ("validation", self.dataset.validation)):
            labels = split.labels() if len(split) else None
            if labels is not None and len(labels) and int(labels.max()) >= head.classes:
                top = int(labels.max())
                count = int((labels >= head.classes).sum())
                raise RunError(f"data '{self.spec.data}' ({split_name} split) has {count} example"
                               f"{'s' if count > 1 else ''} labelled up to {top}, but the classifier of model "
                               f"'{self.plan.model}' has {head.classes} classes (labels 0..{head.classes - 1})",
                               help=f"give the model head: classifier(classes: {top + 1}), or relabel the data")

    def preflight(self) -> None:
        """What setup() reads and can fail on, before the run directory: the tokenizer (a BPE
        learned from the data) and the data, prepared into the cache, with the checks of its
        lengths and labels. Setup later finds both in the cache. A preference set that a
        feedback stage collects exists only once that stage has run: nothing to prepare."""
        if self.ctx.report.spec.resolved.blocks[self.spec.data].kind != "data":
            return
        self._setup_tokens_and_data()

    # ------------------------------------------------------------------ batches

    def _batch(self, stream, position: int, gen: torch.Generator, size: int | None = None) -> dict[str, torch.Tensor]:
        examples = stream.take(position, size or self.micro)
        batch = self.terms[0][1].build(examples, gen)
        for _, obj in self.terms[1:]:
            batch = obj.augment(batch, gen)
        cuda = self.device.type == "cuda"
        batch = {k: (v.pin_memory() if cuda else v).to(self.device, non_blocking=cuda) for k, v in batch.items()}
        if self.reference is not None:  # the frozen reference's log-probs, for dpo
            from lmspec.runtime.objectives import model_inputs

            with torch.no_grad(), self.precision.autocast():
                ref = self.reference(**model_inputs(batch))
            batch["ref_logprobs"] = self.terms[0][1].token_logprobs(ref.logits, batch)
        return batch

    def step(self, i: int) -> dict[str, float]:
        s, n, rank = self.spec, self.world.size, self.world.rank
        shares = [m * n + rank for m in range(s.grad_accum)]  # this rank's micro-batches of the step's n x grad_accum
        micro_batches = [self._batch(self.train_stream, i * s.batch + j * self.micro,
                                     engine.micro_generator(s.seed, i, j)) for j in shares]
        lr = engine.lr_at(i, s.schedule, s.optimizer.lr, s.steps)
        r = engine.train_step(self.forward_model, self.optimizer, micro_batches, self.terms, lr=lr,
                              clip_grad=s.clip_grad, precision=self.precision, scaler=self.scaler,
                              no_sync=self.ddp.no_sync if self.ddp is not None else None)
        if not r.finite:
            raise NonFiniteLoss(
                f"stage '{self.name}' got a non-finite loss at step {i + 1} (loss {r.loss}, grad norm {r.grad_norm}); "
                "the run stopped and keeps its last good checkpoint",
                help="lower the learning rate, add warmup or clip_grad, or train in fp32; then resume with "
                     f"`lmspec run --resume {self.ctx.run_path} --force --set {self.name}.KEY=VALUE`")
        self.skipped = self.skipped + 1 if r.skipped else 0
        if self.skipped >= 20:
            raise NonFiniteLoss(f"stage '{self.name}': fp16 gradients overflowed on 20 steps in a row (to step {i + 1}); "
                                "the grad scaler skipped every update",
                                help="train in bf16 (precision: bf16) or lower the learning rate")
        self.steps_done = i + 1
        out = {"loss": r.loss, "lr": lr, "grad_norm": r.grad_norm, "tokens": r.tokens}
        if len(r.terms) > 1:
            out.update({f"loss_{k}": v for k, v in r.terms.items()})
        if r.moe_aux is not None:  # the load-balancing loss; `loss` holds it times the aux_loss coefficient
            out["moe_aux"] = r.moe_aux
        return out

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val_stream is None:
            return {}
        s = self.spec
        sums = [0.0] * len(self.terms)
        counts = [0] * len(self.terms)
        extra: dict[str, float] = {}
        self.model.eval()
        try:
            n = min(s.eval_batches, max(1, math.ceil(len(self.val_stream) / self.eval_micro)))
            for j in range(n):
                batch = self._batch(self.val_stream, j * self.eval_micro, engine.micro_generator(s.seed, 0, j, salt=1),
                                    self.eval_micro)
                out, losses = engine.forward_terms(self.model, batch, self.terms, self.precision)
                for t, ((_, obj), loss) in enumerate(zip(self.terms, losses)):
                    units = obj.count(batch)
                    sums[t] += float(loss)
                    counts[t] += units
                    for k, v in obj.metrics(out, batch).items():
                        extra[k] = extra.get(k, 0.0) + float(v)
                        extra[f"_{k}_n"] = extra.get(f"_{k}_n", 0.0) + units
        finally:
            self.model.train()
        loss = sum(w * sm / max(c, 1) for (w, _), sm, c in zip(self.terms, sums, counts))
        result = {"eval_loss": loss}
        if len(self.terms) > 1:
            result.update({f"eval_loss_{obj.kind}": sm / max(c, 1) for (_, obj), sm, c in zip(self.terms, sums, counts)})
        if all(obj.token_level for _, obj in self.terms):
            result["perplexity"] = math.exp(min(loss, 700.0))
            if self.tokenizer.kind == "bytes":
                result["bits_per_byte"] = loss / math.log(2)
        for k in [k for k in extra if not k.startswith("_")]:
            result[k] = extra[k] / max(extra[f"_{k}_n"], 1)
        if self.steps_done == s.steps and any(obj.kind == "bradley_terry" for _, obj in self.terms):
            self._stop_at_chance(result.get("accuracy"), int(extra.get("_accuracy_n", 0)))
        return result

    #: the fewest held-out pairs that can tell a reward model from a coin
    CHANCE_PAIRS = 50

    def _stop_at_chance(self, accuracy: float | None, pairs: int) -> None:
        """A reward model no better than a coin on held-out pairs would have the rl stages after
        it optimise noise: stop with the figures (two standard errors of a fair coin)."""
        if accuracy is None or pairs < self.CHANCE_PAIRS:
            return
        band = 2 * math.sqrt(0.25 / pairs)
        if accuracy < 0.5 + band:
            raise RunError(f"reward model '{self.name}' is at chance: held-out pair accuracy {accuracy:.3f} on {pairs} "
                           f"pairs (a coin gets 0.5 +- {band:.3f}); the stages that read its rewards would optimise "
                           "noise", help="train it longer (steps), collect more pairs or clearer labels (a judge "
                                         "whose scores differ more), then resume with `lmspec run --resume RUN --force`")

    @torch.no_grad()
    def samples(self, i: int) -> list[dict]:
        """`samples` continuations of validation (else training) prompts, for a decoder with an lm head."""
        n, new_tokens = self.spec.samples, self.spec.sample_tokens
        if not n or self.model.decoder is None or self.model.encoder is not None or self.model.lm_head is None \
                or self.dataset is None:
            return []
        split = self.dataset.validation if len(self.dataset.validation) else self.dataset.train
        field = "prompt" if "prompt" in self.dataset.fields else "text"
        out = []
        gen = torch.Generator(device=self.device).manual_seed(self.spec.seed + 1)
        for j in range(min(n, len(split))):
            ids = split.example(j * max(1, len(split) // n))[field]  # spread over the split
            prompt = ids if field == "prompt" else self._opening(ids)
            room = self.plan.arch.context - len(prompt)
            if room < 1:
                continue
            tokens = self.model.generate(prompt[None].to(self.device), max_new_tokens=min(new_tokens, room),
                                         temperature=0.8, top_k=50, eos_id=self.tokenizer.eos_id, generator=gen)
            out.append({"prompt": self.tokenizer.decode(prompt.tolist()),
                        "text": self.tokenizer.decode(tokens[0, len(prompt):].tolist())})
        return out

    def _opening(self, ids: torch.Tensor) -> torch.Tensor:
        """The first few words of a document, cut at a space, as a prompt."""
        head = self.tokenizer.decode(ids[:32].tolist())
        cut = head.rfind(" ", 0, 24)
        prompt = self.tokenizer.encode(head[:cut] if cut > 0 else head[:16])
        return torch.tensor(prompt or ids[:1].tolist(), dtype=torch.long)

    # ------------------------------------------------------------------ state

    def state_dict(self):
        """Called on every rank (it gathers each rank's dropout generator). DDP's replicas are
        identical, so rank 0 writes one process's model and optimizer; a sharded model's state
        is written by every rank, its slices. Any number of processes can resume from either."""
        if self.sharded:
            tensors, opt_meta = sharded_state(self.model, self.optimizer, self.tied)
        else:
            opt_tensors, opt_meta = optimizer_tensors(self.optimizer)
            tensors = {"model": unique_state(self.model), "optimizer": opt_tensors}
        rngs = distributed.gather_json(rng_state())
        # the next example of the training stream (informative: positions are a function of the step)
        state = {"rng": rngs[0], "optimizer": opt_meta, "data_position": self.steps_done * self.spec.batch}
        if len(rngs) > 1:
            state["rng_ranks"] = rngs
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return tensors, state

    def load_state_dict(self, tensors, state) -> None:
        where = f"the checkpoint of stage '{self.name}'"
        if isinstance(tensors, ShardedTensors):  # written sharded: read into any sharding (DCP reshards)
            load_sharded_state(self.model, self.optimizer, tensors, state["optimizer"], self.tied, where)
        elif self.sharded:  # written by one process (or DDP's rank 0): each rank keeps its slices
            load_whole_state_sharded(self.model, self.optimizer, tensors, state["optimizer"], self.tied, self.layout,
                                     where)
        else:
            load_model_state(self.model, tensors["model"], where)
            load_optimizer(self.optimizer, tensors.get("optimizer", {}), state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.steps_done = state.get("data_position", 0) // self.spec.batch
        ranks, n, rank = state.get("rng_ranks", [state["rng"]]), self.world.size, self.world.rank
        if len(ranks) == n:
            set_rng_state(ranks[rank])
        elif rank == 0:
            set_rng_state(state["rng"])
        else:  # resumed with more processes than wrote the checkpoint: a fresh dropout stream of its own
            engine.seed_everything(engine.step_seed(self.spec.seed, self.steps_done, 0, salt=2 + rank))

    def consolidate(self) -> None:
        """Called on every rank before rank 0 writes the artifacts: a sharded model's weights
        gathered onto rank 0, for the single-process weights file."""
        if self.sharded:
            self.final_weights = gathered_model_state(self.model, self.tied)

    def artifacts(self, directory: Path) -> StageArtifacts:
        from lmspec.compiler.arch import arch_to_dict

        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self.model, directory / "model.safetensors", metadata={"stage": self.name},
                     state=self.final_weights if self.sharded else None)
        write_json_atomic(directory / "arch.json", arch_to_dict(self.plan.arch))
        self.tokenizer.save(directory / "tokenizer")
        return StageArtifacts({"weights": directory / "model.safetensors", "arch": directory / "arch.json",
                               "tokenizer": directory / "tokenizer"}, self.plan.model)
