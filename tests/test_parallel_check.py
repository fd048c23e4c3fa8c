"""Memory per device before anything launches: activation checkpointing (at run time and in the
estimate), DDP and FSDP2 figures per device, and the check's rules over devices (LMS089,
LMS120-LMS123) from spec keys and from `lmspec check --devices N --device-memory SIZE`.

The checkpointed activation estimate is compared, byte for byte on CPU, with the storages a
forward and backward pass keeps alive at the worst moment: `LiveStorages` records every tensor
an op makes during the forward pass and during each block's recomputation, and weighs those
still alive at the end of the forward pass and at the end of each recomputation. The same
instrument reproduces the saved-tensor figures of tests/test_analysis.py without checkpointing.
The FSDP shards are measured on a real `fully_shard` model in a fake process group of 8.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from test_analysis import ACTIVATION_CASES, ACTIVATION_IDS, _fake_inputs, decoder, encoder_decoder
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lmspec.compiler.analysis import activation_bytes, device_memory, training_memory
from lmspec.compiler.api import check_text
from lmspec.compiler.build import build_model
from lmspec.compiler.compile import compile_spec
from lmspec.compiler.modules.block import Block
from lmspec.compiler.rules_parallel import Hardware, device_plans, parse_size, render_device_plans
from lmspec.diagnostics import render_text
from lmspec.runtime import distributed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- checkpointing at run time


def _gradients(arch, checkpoint: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(arch).train().checkpoint_activations(checkpoint)
    torch.manual_seed(1)  # the same inputs and dropout masks both times
    inputs = _fake_inputs(arch, 2, 16)
    out = model(**inputs)
    F.cross_entropy(out.logits.flatten(0, 1), torch.randint(0, arch.vocab, out.logits.shape[:2]).flatten()).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", [
    decoder(2, dropout=0.1, kv=2, kind="sliding", window=8, pos="rope"),
    decoder(2, pos="alibi", act="reglu", kind="prefix"),
    encoder_decoder(2, pos="relative", act="relu", norm="rmsnorm", bias=False),  # T5's trained, masked bias
], ids=["dropout-rope-sliding", "alibi-prefix", "t5"])
def test_checkpointed_blocks_give_the_same_gradients(arch):
    plain, checkpointed = _gradients(arch, False), _gradients(arch, True)
    assert plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=0, msg=name)


def test_checkpointing_only_applies_to_training_with_gradients(monkeypatch):
    from lmspec.compiler.modules import model as model_module

    calls = []
    monkeypatch.setattr(model_module, "checkpoint", lambda fn, *a, **k: calls.append(1) or fn(*a))
    arch = decoder(2)
    model = build_model(arch).checkpoint_activations()
    ids = torch.randint(0, arch.vocab, (1, 6))
    model.eval()(ids)
    with torch.no_grad():
        model.train()(ids)
    model.generate(ids, max_new_tokens=3)
    assert calls == []
    model.train()(ids)
    assert len(calls) == 2  # one per block
    model.checkpoint_activations(False)(ids)
    assert len(calls) == 2


SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: text("corpus.txt"), validation: 10% }
model m { vocab: tok.vocab_size, context: 16, layers: 2, d_model: 32, heads: 4, position: rope, dropout: 0.1 }
train pretrain { model: m, objective: clm, data: d, steps: 3, batch: 4, log_every: 1, samples: 0,
                 checkpoint_activations: CKPT }
"""


def test_the_train_stage_checkpoints_when_the_spec_says_so_and_trains_the_same(tmp_path, monkeypatch):
    from lmspec.compiler.modules import model as model_module
    from lmspec.runtime.api import open_run, run
    from lmspec.runtime.progress import Progress

    (tmp_path / "corpus.txt").write_text("\n\n".join(f"story {i}: the cat sat on a mat and ran" for i in range(40)))
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    calls = []
    real = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    losses = {}
    for ckpt in ("false", "true"):
        (tmp_path / f"{ckpt}.lmspec").write_text(SPEC.replace("CKPT", ckpt))
        run(f"{ckpt}.lmspec", out=f"run-{ckpt}", device="cpu", progress=Progress(quiet=True))
        losses[ckpt] = [m["loss"] for m in open_run(f"run-{ckpt}").metrics("pretrain") if "loss" in m]
        assert bool(calls) == (ckpt == "true")
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-6)


# ----------------------------------------------------------------------------- checkpointing, estimated


class LiveStorages(TorchDispatchMode):
    """Every storage an op makes while `recording`, by weak reference; parameters and autocast's
    copies of them left out. `live()` weighs those still alive, each storage once."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params, self.refs, self.copies, self.recording = params, [], [], True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.recording:
            return out
        first = args[0] if args else None
        if func is torch.ops.aten._to_copy.default and first.untyped_storage().data_ptr() in self.params:
            self.copies.append(StorageWeakRef(out.untyped_storage()))
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.params:
                self.refs.append((StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        return out

    def live(self, leave_out: list[torch.Tensor]) -> int:
        alive = {ref.cdata: n for ref, n in self.refs if not ref.expired()}
        for ref in self.copies:
            if not ref.expired():
                alive.pop(ref.cdata, None)
        for t in leave_out:
            alive.pop(StorageWeakRef(t.untyped_storage()).cdata, None)
        return sum(alive.values())


def peak_activation_bytes(arch, B: int, T: int, T_dec: int, *, checkpoint: bool, autocast: bool) -> int:
    """The most bytes a training step keeps alive for backward: at the end of the forward pass
    and its loss, and (checkpointing) at the end of each block's recomputation."""
    torch.manual_seed(0)
    model = build_model(arch).train().checkpoint_activations(checkpoint)
    mode = LiveStorages({p.untyped_storage().data_ptr() for p in model.parameters()})
    moments, loss_tensors, backward = [], [], []

    def start(module, args):
        if backward:  # a recomputation begins
            mode.recording = True

    def end(module, args, out):
        if backward:  # a recomputation ends: what it kept, less its output (no one keeps that)
            moments.append(mode.live([out] + loss_tensors))
            mode.recording = False

    layers = [layer for stack in (model.encoder, model.decoder) if stack is not None for layer in stack.layers]
    hooks = [h for m in layers for h in (m.register_forward_pre_hook(start), m.register_forward_hook(end))]
    # without early stop a recomputation runs its block to the end, so the hook above sees it
    with torch_checkpoint.set_checkpoint_early_stop(False), mode, \
            torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        inputs = _fake_inputs(arch, B, T)
        if arch.arch == "encoder_decoder":
            inputs["decoder_input_ids"] = torch.randint(0, arch.vocab, (B, T_dec))
        out = model(**inputs)
        if out.logits is not None:
            loss_tensors.append(F.cross_entropy(out.logits.flatten(0, 1),
                                                torch.randint(0, arch.vocab, out.logits.shape[:2]).flatten()))
        for logits in (out.nsp_logits, out.class_logits):
            if logits is not None:
                loss_tensors.append(F.cross_entropy(logits, torch.zeros(B, dtype=torch.long)))
        if out.scores is not None:
            loss_tensors.append(F.logsigmoid(out.scores).sum())
        del out, inputs, logits
        loss = sum(loss_tensors)
        loss_tensors.append(loss)
        moments.append(mode.live(loss_tensors))
        mode.recording = False
        backward.append(True)
        loss.backward()
    for h in hooks:
        h.remove()
    return max(moments)


def _estimate(arch, B, T, T_dec, precision, checkpoint):
    return sum(activation_bytes(arch, batch=B, seq_len=T, decoder_seq_len=T_dec if arch.arch == "encoder_decoder"
                                else None, precision=precision, device="cpu",
                                checkpoint_activations=checkpoint).values())


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("arch", [ACTIVATION_CASES[i] for i in (1, 9)], ids=[ACTIVATION_IDS[i] for i in (1, 9)])
def test_the_instrument_measures_what_test_analysis_measures_without_checkpointing(arch):
    T_dec = 20 if arch.arch == "encoder_decoder" else 32
    for precision in ("fp32", "bf16"):
        measured = peak_activation_bytes(arch, 2, 32, T_dec, checkpoint=False, autocast=precision == "bf16")
        assert measured == _estimate(arch, 2, 32, T_dec, precision, False), precision


def _layers_with(arch, **fields):
    """`arch` with every decoder layer changed (GPT-J's parallel layers, Qwen3's QK-norm)."""
    layers = tuple(dataclasses.replace(layer, **fields) for layer in arch.decoder.layers)
    return dataclasses.replace(arch, decoder=dataclasses.replace(arch.decoder, layers=layers))


CHECKPOINT_CASES = ACTIVATION_CASES + [
    _layers_with(decoder(2, pos="rope", norm="rmsnorm"), parallel=True),
    _layers_with(decoder(2, pos="rope", norm="rmsnorm"), parallel=True, shared_norm=True),
    _layers_with(decoder(2, pos="rope", norm="rmsnorm", kv=2), qk_norm=True),
]
CHECKPOINT_IDS = ACTIVATION_IDS + ["parallel", "parallel-shared-norm", "qk-norm"]


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", CHECKPOINT_CASES, ids=CHECKPOINT_IDS)
def test_checkpointed_activation_estimate_matches_the_measured_peak(arch, precision):
    # byte for byte on torch 2.13's CPU kernels for every design of test_analysis, and parallel layers
    T_dec = 20 if arch.arch == "encoder_decoder" else 32
    measured = peak_activation_bytes(arch, 2, 32, T_dec, checkpoint=True, autocast=precision == "bf16")
    assert _estimate(arch, 2, 32, T_dec, precision, True) == measured
    assert measured < _estimate(arch, 2, 32, T_dec, precision, False)


def test_checkpointed_peak_is_block_inputs_plus_one_block_or_the_end_of_the_forward_pass():
    from test_analysis import GPT2

    from lmspec.compiler.api import load_arch

    gpt2 = load_arch(GPT2)
    # batch 8 x 1024 on a GPU: the loss's log-probabilities outweigh any one block, so the
    # peak is the end of the forward pass: ids, 12 fp32 block inputs, the final norm, the head, the loss
    acts = activation_bytes(gpt2, batch=8, seq_len=1024, precision="bf16", checkpoint_activations=True)
    assert acts == {"embeddings": 8 * 8192 + 8 * 1024, "decoder.block_inputs": 12 * 4 * 8192 * 768,
                    "decoder.final_norm": 8192 * (4 * 768 + 8), "heads": 2 * 8192 * 768,
                    "loss": 4 * 8192 * 50_257 + 8 * 8192 + 4}
    # a tiny vocabulary: the peak is the last block recomputed, with every block input alive
    small = decoder(3, vocab=16)
    acts = activation_bytes(small, batch=2, seq_len=32, checkpoint_activations=True, device="cpu")
    plain = activation_bytes(small, batch=2, seq_len=32, device="cpu")
    one_block = sum(v for k, v in plain.items() if k.startswith("decoder.") and k != "decoder.final_norm") // 3
    assert set(acts) == {"embeddings", "decoder.block_inputs", "decoder.recomputed"}
    assert acts["decoder.block_inputs"] == 3 * 4 * 64 * 32
    assert acts["decoder.recomputed"] == one_block - 4 * 64 * 32  # less the input its first norm keeps


# ----------------------------------------------------------------------------- per device


def test_ddp_per_device_is_one_process_whose_gradients_are_the_all_reduce_buckets():
    """tests/test_ddp_memory.py measures the buckets; here, what the plan makes of them."""
    arch = decoder(2)
    one = training_memory(arch, batch=4, seq_len=16, precision="bf16")
    alone = device_memory(arch, world=1, parallel="ddp", batch=4, seq_len=16, precision="bf16")
    eight = device_memory(arch, world=8, parallel="ddp", batch=4, seq_len=16, precision="bf16")
    assert alone.total == eight.total == one.total and eight.gradients == one.gradients
    assert eight.gradient_buffers == eight.bucket_rebuild == 0
    # with gradient accumulation, the moment DDP rebuilds its buckets: old and new at once, no activations
    accum = device_memory(arch, world=8, parallel="ddp", batch=4, seq_len=16, precision="bf16", grad_accum=2)
    assert accum.bucket_rebuild == one.weights + 2 * one.gradients + one.optimizer
    assert accum.total == max(one.total, accum.bucket_rebuild)
    small = device_memory(arch, world=8, parallel="ddp", batch=1, seq_len=2, grad_accum=2)  # activations < gradients
    assert small.total == small.bucket_rebuild > small.training


def test_fsdp_shards_match_fully_shard_in_a_fake_process_group_of_8():
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    arch = decoder(2, d=36, ff=70, vocab=101, tie_embeddings=True, act="swiglu")  # rows that 8 does not divide
    estimate = device_memory(arch, world=8, parallel="fsdp", batch=2, seq_len=8)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
    try:
        model = build_model(arch)
        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block)
        fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.randint(0, arch.vocab, (2, 8))).logits.float().mean().backward()
        optimizer.step()

        def distinct(tensors) -> int:  # padded local shards; a group's gradients share one buffer
            return sum({s.data_ptr(): s.nbytes() for s in (t._local_tensor.untyped_storage() if hasattr(
                t, "_local_tensor") else t.untyped_storage() for t in tensors)}.values())

        assert estimate.weights == distinct(model.parameters())
        assert estimate.gradients == distinct(p.grad for p in model.parameters())
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        assert estimate.optimizer == distinct(state)
    finally:
        dist.destroy_process_group()


def test_fsdp_gathers_the_root_and_the_two_largest_blocks():
    arch = decoder(3, d=64, ff=256, vocab=1000)
    m = device_memory(arch, world=4, parallel="fsdp", batch=1, seq_len=8, precision="bf16")
    block = 2 * 64 + 64 * 192 + 192 + 64 * 64 + 64 + 2 * 64 + 64 * 256 + 256 + 256 * 64 + 64  # norms, attn, mlp
    root = 1000 * 64 + 64 * 64 + 2 * 64 + 1000 * 64  # embeddings, positions, final norm, untied head
    assert m.gathered == 2 * (root + 2 * block)  # bf16: the mixed-precision policy's compute dtype
    assert m.gradient_buffers == 4 * (root + 2 * block) and m.weight_copies == 0
    assert m.weights == 4 * sum(-(-r // 4) * c for r, c in [(1000, 64), (64, 64), (64, 1), (64, 1), (1000, 64)]) \
        + 3 * 4 * sum(-(-r // 4) * c for r, c in [(64, 1), (64, 1), (192, 64), (192, 1), (64, 64), (64, 1), (64, 1),
                                                  (64, 1), (256, 64), (256, 1), (64, 256), (64, 1)])


def test_fsdp_needs_the_whole_model_on_each_device_before_sharding():
    from lmspec.compiler.analysis import count_parameters

    arch = decoder(16, d=256, ff=1024, vocab=100)  # 16 blocks, a small root: two blocks gathered are 1/8
    m = device_memory(arch, world=64, parallel="fsdp", batch=1, seq_len=4)
    whole = 4 * count_parameters(arch).total
    assert m.whole_model == whole and m.training < whole and m.total == whole


def test_a_dpo_stage_holds_its_frozen_reference_whole_on_every_device():
    from lmspec.compiler.analysis import count_parameters

    spec = PRELUDE + CRITIC + """
train pre { model: gpt, objective: clm, data: text }
feedback f { policy: gpt from pre, prompts: text.prefixes(tokens: 8), judge: j }
train d { model: gpt from pre, objective: dpo, data: f, batch: 64, seq_len: 64 }
"""
    report = check_text(spec, "spec.lmspec", devices=8, device_memory="80GB")
    plans = device_plans(report)
    reference = 4 * count_parameters(report.models["gpt"]).total
    for m in (plans["d"].replicated, plans["d"].sharded):
        assert m.frozen == reference and m.total == max(m.training, m.whole_model) + reference
    assert plans["pre"].memory.frozen == 0


def test_bad_world_or_parallelism_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown parallelism 'tp'"):
        device_memory(decoder(), world=2, parallel="tp", batch=1, seq_len=8)
    with pytest.raises(ValueError, match="world must be 1 or more"):
        device_memory(decoder(), world=0, parallel="ddp", batch=1, seq_len=8)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text, size", [("80GB", 80 * 10**9), ("80GiB", 80 * 2**30), ("1.5TB", 15 * 10**11),
                                        ("512 MiB", 512 * 2**20), ("24KB", 24_000), ("7B", 7)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, message", [
    ("80", 'has no unit: write e.g. "80GB"'), ("80gb", 'did you mean "80GB"?'), ("80 gigabytes", 'unknown unit'),
    ("GB", "is not a size"), ("0GB", "is no memory at all"), ("-1GB", "is not a size"),
])
def test_bad_sizes_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


# ----------------------------------------------------------------------------- check: the rules

PRELUDE = """lmspec 1
tokenizer tok { kind: bytes }
data text { source: builtin("tiny-stories") }
model gpt { vocab: 50_304, context: 1024, layers: 12, d_model: 768, heads: 12 }
"""


CRITIC = """model critic { vocab: 50_304, context: 128, layers: 1, d_model: 64, heads: 4, head: classifier(classes: 2) }
data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
train fit { model: critic, objective: classify(label: "sentiment"), data: reviews }
judge j { model: critic from fit }"""


def check(stage: str, **hardware):
    return check_text(PRELUDE + stage + "\n", "spec.lmspec", **hardware)


def one(report, code: str):
    found = [d for d in report.diagnostics if d.code == code]
    assert len(found) == 1, [f"{d.code} {d.message}" for d in report.diagnostics]
    return found[0]


def test_a_batch_that_does_not_split_over_the_devices_is_lms089_with_the_figures():
    report = check("train t { model: gpt, objective: clm, data: text, batch: 64, grad_accum: 2 }", devices=3)
    d = one(report, "LMS089")
    assert d.message == ("batch (64) of stage 't' does not split over 3 devices x grad_accum (2) = 6 equal "
                         "micro-batches")
    assert (d.span.line, d.span.col) == (5, 58)
    assert d.help.startswith("use batch: 60 or batch: 66 (a multiple of 2 x 3), or check with --devices 1, 2, 4, 8,")
    keyed = check("train t { model: gpt, objective: clm, data: text, batch: 64, grad_accum: 2, devices: 3 }")
    d = one(keyed, "LMS089")
    assert "or plan for devices: 1, 2, 4" in d.help and d.labels[0].message == "3 devices"
    assert check("train t { model: gpt, objective: clm, data: text, batch: 64, grad_accum: 2 }", devices=4).ok


def test_a_stage_that_does_not_fit_even_sharded_is_lms120_with_the_figures_and_what_would_fit():
    report = check('train t { model: gpt, objective: clm, data: text, batch: 512, precision: bf16,\n'
                   '  devices: 8, device_memory: "24GB" }')
    d = one(report, "LMS120")
    assert d.message == ("train 't' needs 33.7 GiB per device even sharded over 8 devices (fsdp), more than the "
                         "22.4 GiB a device has")
    assert (d.span.line, d.span.col) == (5, 7)  # the stage; the label points at the device memory
    assert d.labels[0].message == "22.4 GiB per device" and (d.labels[0].span.line, d.labels[0].span.col) == (6, 30)
    # 163M parameters (the head is untied) over 8; the root (embeddings, positions, head) and two
    # blocks gathered in bf16, their gradients in fp32
    assert d.notes == ["per device: weights 77.8 MiB + gathered 176 MiB + gradients 77.8 MiB + unsharded gradients "
                       "352 MiB + optimizer 156 MiB + activations 32.9 GiB = 33.7 GiB, for micro-batches of 64 x 1024 "
                       "tokens"]
    assert d.help == ("set checkpoint_activations: true (17.5 GiB per device), raise grad_accum to 2 (19.1 GiB per "
                      "device, micro-batches of 32), or shard over 16 devices (17.1 GiB per device, parallel: fsdp or "
                      "auto)")


def test_the_flags_override_the_keys_and_are_named_in_a_note():
    stage = 'train t { model: gpt, objective: clm, data: text, batch: 512, precision: bf16, device_memory: "80GB" }'
    assert check(stage, devices=8).ok  # 33.7 GiB of 74.5
    d = one(check(stage, devices=8, device_memory="24GB"), "LMS120")
    assert d.labels == [] and d.notes[-1] == "22.4 GiB per device from --device-memory 24GB"
    d = one(check(stage), "LMS120")  # one device: everything replicated, micro-batches of 512
    assert d.message == "train 't' needs 266 GiB on one device, more than the 74.5 GiB a device has"


def test_explicit_ddp_that_fits_only_sharded_is_lms121():
    report = check("train t { model: gpt, objective: clm, data: text, batch: 32, precision: bf16, parallel: ddp,\n"
                   "  checkpoint_activations: true }", devices=8, device_memory="2GB")
    d = one(report, "LMS121")
    assert (d.span.line, d.span.col) == (5, 89)  # `ddp`
    assert d.message == ("train 't' needs 3.59 GiB per device replicated on 8 devices (parallel: ddp), more than the "
                         "1.86 GiB a device has; sharded it needs 1.75 GiB")
    assert "use parallel: fsdp" in d.help


def test_auto_is_ddp_when_it_fits_replicated_and_fsdp_otherwise():
    stage = "train t { model: gpt, objective: clm, data: text, batch: 32, precision: bf16 }"
    roomy, tight = check(stage, devices=8, device_memory="80GB"), check(stage, devices=8, device_memory="4GB")
    assert device_plans(roomy)["t"].chosen == "ddp"
    plan = device_plans(tight)["t"]
    assert plan.chosen == "fsdp" and plan.fits and plan.memory.total < plan.replicated.total
    assert "auto -> fsdp" in render_device_plans(device_plans(tight))
    assert device_plans(check(stage, devices=8))["t"].chosen == "ddp"  # no memory known: ddp, as the runtime does


def test_a_tight_fit_is_a_warning_and_a_bad_size_an_error_at_the_key():
    stage = "train t { model: gpt, objective: clm, data: text, batch: 32, precision: bf16, device_memory: \"22GB\" }"
    d = one(check(stage), "LMS123")
    assert d.severity == "warning" and "93% of the 20.5 GiB a device has" in d.message
    assert d.help.startswith("leave a tenth free: set checkpoint_activations: true (10.1 GiB per device)")
    d = one(check(stage.replace('"22GB"', '"22 GB of HBM"')), "LMS122")
    assert (d.span.line, d.span.col) == (5, 94)
    assert d.message == 'device_memory: "22 GB of HBM" is not a size: write a number and a unit, e.g. "80GB" or "80GiB"'


def test_an_rl_stage_is_checked_per_device_with_its_share_of_the_rollouts():
    """rl stages hold 1/N of the rollouts and of each minibatch on each device (under DDP every
    model whole on each; auto shards the policy when it fits only so: tests/test_rl_parallel_check.py);
    rollouts that do not split in whole prompt groups are LMS089."""
    spec = PRELUDE + CRITIC + """
train pre { model: gpt, objective: clm, data: text }
rl r { policy: gpt from pre, reward: j, rollouts { prompts: text.prefixes(tokens: 8), per_step: 256 },
       device_memory: "4GB" }
"""
    report = check_text(spec, "spec.lmspec", devices=8)
    # replicated it does not fit; sharded it does (auto chooses fsdp)
    assert not [d for d in report.diagnostics if d.code in ("LMS120", "LMS121", "LMS123")]
    eight = device_plans(report, Hardware(devices=8))
    alone = device_plans(check_text(spec, "spec.lmspec"), Hardware(devices=1))
    assert eight["r"].devices == 8 and eight["r"].chosen == "fsdp" and eight["pre"].devices == 8
    assert alone["r"].devices == 1
    # replicated, a device holds the same models but an eighth of the rollouts: less activation and KV cache
    assert eight["r"].replicated.weights == alone["r"].memory.weights
    assert eight["r"].replicated.activations < alone["r"].memory.activations
    assert eight["r"].replicated.total > 4 * 10**9 > eight["r"].memory.total
    (d,) = [d for d in check_text(spec, "spec.lmspec", devices=3).diagnostics
            if d.code == "LMS089" and "stage 'r'" in d.message]
    assert "per_step (256) of stage 'r' does not split over 3 devices" in d.message
    assert "check with --devices" in d.help


def test_the_per_device_table_and_json(tmp_path):
    (tmp_path / "spec.lmspec").write_text(PRELUDE + "train t { model: gpt, objective: clm, data: text, batch: 32, "
                                          "precision: bf16, checkpoint_activations: true }\n")
    done = subprocess.run([sys.executable, "-m", "lmspec", "check", "spec.lmspec", "--no-meta", "--devices", "8",
                           "--device-memory", "4GB"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("per device\n", 1)[1].splitlines()
    assert table[0].split() == ["stage", "devices", "parallel", "micro", "weights", "grads", "optim", "activ.",
                                "memory", "device", "fits"]
    assert table[1].split()[:5] == ["t", "8", "auto", "->", "fsdp"] and "ckpt" in table[1] and "yes" in table[1]
    done = subprocess.run([sys.executable, "-m", "lmspec", "check", "spec.lmspec", "--no-meta", "--json",
                           "--devices", "8", "--device-memory", "4GB"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    per_device = json.loads(done.stdout)["files"][0]["figures"]["stages"]["t"]["per_device"]
    assert per_device["chosen"] == "fsdp" and per_device["micro_batch"] == 4 and per_device["fits"] is True
    assert per_device["memory_bytes"]["parallel"] == "fsdp" and per_device["device_memory"] == 4 * 10**9
    bad = subprocess.run([sys.executable, "-m", "lmspec", "check", "spec.lmspec", "--device-memory", "4gb"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and 'did you mean "4GB"?' in bad.stderr


# ----------------------------------------------------------------------------- at `lmspec run`


def test_the_run_checks_its_own_world_size_with_the_same_rule():
    spec = PRELUDE + ('train t { model: gpt, objective: clm, data: text, batch: 512, precision: bf16,\n'
                      '  devices: 8, device_memory: "80GB" }\n')
    report = check_text(spec, "spec.lmspec")
    assert report.ok  # 33.7 GiB of 74.5 per device
    schedule = compile_spec(report)
    assert distributed.check_world(report, schedule, ["t"], 8) == []
    assert distributed.check_world(report, schedule, ["t"], 1) == []  # a smoke test on one process
    [d] = distributed.check_world(report, schedule, ["t"], 3)
    assert d.code == "LMS089" and (d.span.line, d.span.col) == (5, 58)
    assert d.message == "batch (512) of stage 't' does not split over 3 processes x grad_accum (1) = 3 equal micro-batches"
    assert d.help.startswith("use batch: 510 or batch: 513 (a multiple of 1 x 3), or run with --nproc 1, 2, 4, 8,")


# ----------------------------------------------------------------------------- the docs


def test_the_scaling_doc_shows_what_check_prints(tmp_path, monkeypatch, capsys):
    from lmspec.cli import main

    import re

    doc = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8").split("## Memory", 1)[1]
    blocks = re.findall(r"```(\w*)\n(.*?)```", doc, re.S)  # the command, the spec, the table, the error
    (lang, spec), (_, table), (_, error) = blocks[1:4]
    assert lang == "lmspec" and table.startswith("per device")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    (tmp_path / "spec.lmspec").write_text(spec)
    assert main(["check", "spec.lmspec", "--no-meta"]) == 0
    assert capsys.readouterr().out.endswith(table)
    (tmp_path / "spec.lmspec").write_text(spec.replace(", checkpoint_activations: true", ""))
    assert main(["check", "spec.lmspec", "--no-meta"]) == 1
    assert capsys.readouterr().err.startswith(error)


def test_the_analysis_doc_quotes_the_computed_figures():
    from test_analysis import GPT2

    from lmspec.compiler.api import load_arch

    text = (ROOT / "docs" / "analysis.md").read_text(encoding="utf-8")
    gpt2 = load_arch(GPT2)
    checkpointed = activation_bytes(gpt2, batch=8, seq_len=1024, precision="bf16", checkpoint_activations=True)
    ddp, fsdp = (device_memory(gpt2, world=8, parallel=p, batch=8, seq_len=1024, precision="bf16")
                 for p in ("ddp", "fsdp"))
    figures = [sum(checkpointed.values()), checkpointed["decoder.block_inputs"], ddp.total, fsdp.total,
               fsdp.weights, fsdp.gathered, fsdp.gradient_buffers, fsdp.optimizer, ddp.gradients]
    for n in figures:
        assert f"{n:,}" in text, n
