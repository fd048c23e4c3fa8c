"""DDP holds one fp32 copy of the gradients: with `gradient_as_bucket_view` every `.grad` is a
view into the reducer's flat all-reduce buckets, from the first micro-batch of the first step on
(`distributed.data_parallel` makes the gradients before DDP is built), and `lmspec check` counts
exactly that (`device_memory(..., parallel="ddp")`), with the one moment it holds two: DDP's
rebuild of its buckets before the second step, when gradient accumulation keeps the gradients.

Measured in 2 gloo processes: the distinct storages of the buckets the all-reduce hands to the
comm hook and of every gradient after each accumulation, summed per step, with the flag (one
copy) and as DDP was built before (two), and the updates are bit-identical either way; and the
storages alive at once while the buckets are rebuilt (a dispatch mode that weighs every storage
made inside, the old buckets given).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_analysis import decoder
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from lmspec.compiler.analysis import count_parameters, device_memory
from lmspec.compiler.build import build_model
from lmspec.runtime import distributed, engine
from lmspec.runtime.objectives.clm import CausalLM
from conftest import gloo_group, spawn

# 1.19 MB of parameters: after the first step DDP splits them into a first bucket of 1 MiB and one more
ARCH = decoder(2, d=128, ff=256)
STEPS = 3


class LiveStorages(TorchDispatchMode):
    """The most bytes alive at once: of `given` storages and of those the ops inside make."""

    def __init__(self, given: dict):  # data_ptr -> (StorageWeakRef, bytes): held weakly, as here
        super().__init__()
        self.alive = dict(given)
        self.peak = self._now()

    def _now(self) -> int:
        return sum(n for ref, n in self.alive.values() if not ref.expired())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                if s.data_ptr() not in self.alive or self.alive[s.data_ptr()][0].expired():
                    self.alive[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        self.peak = max(self.peak, self._now())
        return out


def _batches(rank: int, step: int, micro: int) -> list[dict]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return [{"input_ids": torch.randint(0, ARCH.vocab, (2, 16), generator=g),
             "labels": torch.randint(0, ARCH.vocab, (2, 16), generator=g)} for _ in range(micro)]


def _train(rank: int, bucket_view: bool, micro: int) -> tuple[list[int], int, dict]:
    """STEPS steps of the engine under DDP, `micro` micro-batches each: the bytes of gradients
    and buckets each step held, the peak of the rebuild of the buckets after the first step,
    and the weights."""
    from torch.nn.parallel import DistributedDataParallel

    storages: dict[int, int] = {}  # data_ptr -> bytes, this step
    buckets: dict = {}  # this step's bucket storages, weakly: data_ptr -> (StorageWeakRef, bytes)

    def keep(t: torch.Tensor) -> None:
        s = t.untyped_storage()  # a view's storage is its base's
        storages[s.data_ptr()] = s.nbytes()

    def recording(state, bucket):
        keep(bucket.buffer())
        s = bucket.buffer().untyped_storage()
        buckets[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        return summing(state, bucket)

    torch.manual_seed(0)
    model = build_model(ARCH)
    summing = distributed._sum_gradients
    if bucket_view:
        distributed._sum_gradients = recording  # data_parallel registers it
        ddp = distributed.data_parallel(model, torch.device("cpu"), accumulates=micro > 1)
        distributed._sum_gradients = summing
    else:  # as data_parallel built DDP before
        ddp = DistributedDataParallel(model, forward_sync_buffers=False)
        ddp.register_comm_hook(None, recording)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: keep(p.grad))
    opt = torch.optim.AdamW(engine.param_groups(model, 0.1), lr=1e-3, fused=True)
    terms = [(1.0, CausalLM(None, None))]
    held, rebuild = [], 0
    for step in range(STEPS):
        storages.clear()
        engine.train_step(ddp, opt, _batches(rank, step, micro), terms, lr=1e-3, clip_grad=0.5,
                          precision=engine.resolve_precision("fp32", torch.device("cpu")), no_sync=ddp.no_sync)
        for p in model.parameters():
            if p.grad is not None:
                keep(p.grad)
        held.append(sum(storages.values()))
        if step == 0:  # what the second forward pass would do first, measured
            with LiveStorages(buckets) as live:
                assert ddp.reducer._rebuild_buckets()
            rebuild = live.peak
        buckets.clear()
    return held, rebuild, {k: v.clone() for k, v in model.state_dict().items()}


def _rank(rank: int, directory: str) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    with gloo_group(rank, f"{directory}/rendezvous"):
        out = {}
        for bucket_view, micro in ((False, 2), (True, 2), (True, 1)):
            name = f"{bucket_view}-{micro}"
            held, rebuild, weights = _train(rank, bucket_view, micro)
            out[name] = {"held": held, "rebuild": rebuild}
            if rank == 0:
                save_file(weights, f"{directory}/weights-{name}.safetensors")
        Path(directory, f"held-{rank}.json").write_text(json.dumps(out))


def test_ddp_holds_one_copy_of_the_gradients_and_check_counts_it(tmp_path):
    from safetensors.torch import load_file

    spawn(_rank, str(tmp_path))
    grads = 4 * count_parameters(ARCH).total
    planned = device_memory(ARCH, world=2, parallel="ddp", batch=2, seq_len=16, grad_accum=2)
    assert planned.gradients == grads and planned.gradient_buffers == 0
    assert planned.bucket_rebuild - planned.weights - planned.optimizer == 2 * grads
    assert device_memory(ARCH, world=2, parallel="ddp", batch=2, seq_len=16).bucket_rebuild == 0
    for rank in (0, 1):
        m = json.loads((tmp_path / f"held-{rank}.json").read_text())
        assert m["True-2"]["held"] == [grads] * STEPS  # every step, the first one's no_sync micro-batch included
        assert m["False-2"]["held"] == [2 * grads] * STEPS  # the .grad tensors and the buckets
        # the rebuild: the gradients kept between steps hold the old bucket until the new ones have them;
        # gradients set to None let it go first; either way the reducer's bookkeeping may add a few
        # hundred bytes at the peak (a small index tensor, alive or not depending on its timing)
        assert 0 <= m["True-2"]["rebuild"] - 2 * grads < 1024, m["True-2"]["rebuild"]
        assert 0 <= m["True-1"]["rebuild"] - grads < 1024, m["True-1"]["rebuild"]
    before, after = (load_file(str(tmp_path / f"weights-{v}-2.safetensors")) for v in (False, True))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
