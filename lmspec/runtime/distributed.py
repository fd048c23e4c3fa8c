"""Several processes, one run: torch.distributed's process group, the rank helpers the runtime
uses, the pre-launch checks, and the launcher — torch's elastic launch API, what torchrun runs.

    lmspec run SPEC --nproc 2                          # launch() starts 2 workers on this machine
    torchrun --nproc-per-node 2 -m lmspec run SPEC     # torchrun starts them; same workers

A worker is `lmspec run` itself, started with the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); `process_group` joins them (gloo on CPU, NCCL on CUDA).
Every rank runs every step on its share of the batch, with the model replicated (DDP,
`data_parallel`) or sharded (FSDP2, `shard_model`); only rank 0 prints and writes the run
directory. Without those variables every helper here is the identity of one process.

A worker that fails writes its error to TORCHELASTIC_ERROR_FILE (the file torch's elastic agent
reads), so `launch` can name the rank and what went wrong; a worker killed by a signal is named
by the agent's exit code.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from lmspec.runtime.errors import RunError

__all__ = ["World", "world", "is_main", "env_world_size", "env_rank", "process_group", "barrier", "rank_zero_first",
           "sum_over_ranks", "any_rank", "broadcast_json", "gather_json", "data_parallel", "shard_model",
           "sharded_grad_scaler", "split_batch", "rollout_split", "split_rollouts",
           "check_world", "refuse_single_process_stages", "resolve_backend", "check_port", "launch",
           "report_failure", "launched", "WORKER_PROGRESS"]

#: set by `launch` for its workers: it reports their errors, so rank 0 does not print them too
LAUNCHED = "LMSPEC_LAUNCHER"
#: set by `launch`: how rank 0 shows progress (live | plain | quiet), as the launching call asked
WORKER_PROGRESS = "LMSPEC_PROGRESS"


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """The world size torchrun (or `launch`) gave this process, or that of a process group the
    caller made itself (torch.multiprocessing); 1 outside one."""
    if _initialised():
        import torch.distributed as dist

        return dist.get_world_size()
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    if _initialised():
        import torch.distributed as dist

        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launched() -> bool:
    return os.environ.get(LAUNCHED) == "1" and env_world_size() > 1


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """This process's place in the run (rank 0 of 1 when there is no process group)."""
    if not _initialised():
        return World()
    import torch.distributed as dist

    return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(), dist.get_backend())


def is_main() -> bool:
    return world().main


# ----------------------------------------------------------------------------- joining and leaving


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto` is NCCL on CUDA and gloo on the CPU; NCCL needs CUDA tensors."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        why = "torch sees no CUDA device" if not torch.cuda.is_available() else f"this run's device is {device}"
        raise RunError(f"--backend nccl needs CUDA devices, and {why}",
                       help="use --backend gloo (or auto, which picks gloo on the CPU), or run on a machine with GPUs")
    if backend not in ("gloo", "nccl"):
        raise RunError(f"--backend {backend}: expected auto, gloo or nccl",
                       help="leave it out: auto picks the right one")
    return backend


def _worker_device(device: str, local_rank: int, size: int) -> torch.device:
    from lmspec.runtime.engine import resolve_device

    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev
    if dev.index is not None and size > 1:
        raise RunError(f"--device {device} names one GPU, but {size} processes share this run",
                       help="use --device cuda: each process takes the GPU of its local rank (cuda:LOCAL_RANK)")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RunError(f"local rank {local_rank} has no GPU: torch sees {count} CUDA device{'s' * (count != 1)} "
                       "on this machine", help=f"start at most {count} processes per machine (--nproc {count})")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(device: str = "auto", backend: str = "auto"):
    """Yield this process's torch.device. Inside a torchrun-style environment with a world size
    above 1, join the process group first (and leave it at the end); otherwise do nothing else."""
    from lmspec.runtime.engine import resolve_device

    size = env_world_size()
    if size == 1 or _initialised():
        yield resolve_device(device) if not _initialised() else _worker_device(device, world().local_rank, world().size)
        return
    import datetime

    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _worker_device(device, local_rank, size)
    name = resolve_backend(backend, dev)
    # a rank that waits longer than this for the others has lost them; evaluation and sampling
    # on rank 0 are the longest the others wait
    dist.init_process_group(name, timeout=datetime.timedelta(minutes=30),
                            device_id=dev if name == "nccl" else None)
    clean = False
    try:
        yield dev
        clean = True
    finally:
        leave_process_group(clean)


def leave_process_group(clean: bool) -> None:
    """Leave the process group at the end of a worker. After a `clean` end every rank first
    meets the others at a barrier: the backend's threads release the last collectives' tensors
    while the interpreter is whole (released during its shutdown they abort the process with
    'terminate called without an active exception', pytorch#190489). After a failure there is no
    barrier: a peer may be gone. On gloo the barrier gives up after a minute (a peer that failed
    after the last collective); on NCCL a launcher's agent stops ranks whose peer failed. Objects
    whose reference cycles hold the group (DDP's reducer) are collected while it exists."""
    import datetime

    import torch.distributed as dist

    if clean:
        with contextlib.suppress(Exception):  # a peer that failed at the very end: leave without it
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(minutes=1))
            else:
                dist.barrier()
    gc.collect()
    with contextlib.suppress(Exception):  # a broken group (a peer died) cannot be torn down politely
        dist.destroy_process_group()


def barrier() -> None:
    if _initialised() and world().size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the body first (it tokenises data into the shared cache, saves the run's
    tokenizers); the others run it after, and read what rank 0 wrote instead of racing it."""
    w = world()
    if w.size > 1 and not w.main:
        barrier()
    yield
    if w.size > 1 and w.main:
        barrier()


def _comm_device() -> torch.device:
    if world().backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over every rank (float64); the values themselves with one process."""
    if not _initialised() or world().size == 1 or not values:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on some rank: every rank then takes the same branch (a Ctrl-C seen
    by one worker stops all of them after the same step)."""
    return sum_over_ranks([float(flag)])[0] > 0 if world().size > 1 else flag


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_comm_device()) if data else \
        torch.zeros(0, dtype=torch.uint8, device=_comm_device())


def broadcast_json(value=None):
    """Rank 0's `value` on every rank, as JSON (nothing is unpickled)."""
    if not _initialised() or world().size == 1:
        return value
    import torch.distributed as dist

    data = json.dumps(value).encode() if world().main else b""
    n = torch.tensor([len(data)], dtype=torch.int64, device=_comm_device())
    dist.broadcast(n, 0)
    buf = _bytes_tensor(data) if world().main else torch.empty(int(n), dtype=torch.uint8, device=_comm_device())
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def gather_json(value) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank, as JSON."""
    if not _initialised() or world().size == 1:
        return [value]
    import torch.distributed as dist

    data = json.dumps(value).encode()
    size = world().size
    n = torch.tensor([len(data)], dtype=torch.int64, device=_comm_device())
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8, device=_comm_device())
    buf[: len(data)] = _bytes_tensor(data)
    bufs = [torch.zeros_like(buf) for _ in range(size)]
    dist.all_gather(bufs, buf)
    return [json.loads(bytes(b[: int(s)].cpu().tolist()).decode()) for b, s in zip(bufs, sizes)]


# ----------------------------------------------------------------------------- data parallelism


def _sum_gradients(state, bucket):
    """DDP's all-reduce, summing instead of averaging: the engine already divides every loss by
    the units of the whole step on all ranks, so the ranks' gradients add up to one process's."""
    import torch.distributed as dist

    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])


def data_parallel(model: torch.nn.Module, device: torch.device, *, accumulates: bool = False):
    """`model` replicated with DistributedDataParallel: parameters broadcast from rank 0,
    gradients summed across ranks in buckets during backward.

    The gradients are the buckets (`gradient_as_bucket_view`): every `.grad` is a view into
    DDP's flat all-reduce buffers, so a device holds one fp32 copy of them, not two. When the
    stage `accumulates` micro-batches they are made here, zero, before DDP is built, which turns
    each into its bucket view at once (DDP leaves a gradient that does not exist yet alone until
    its first backward has run); without micro-batches they stay None, so building DDP never
    holds a zero copy beside its buckets. With micro-batches under `no_sync` the engine then
    zeroes them in place
    (`zero_grad(set_to_none=False)`): a gradient set to None would come back as a fresh tensor
    in those micro-batches, a second copy until the all-reduce copies it into its bucket. With
    one backward per update it sets them to None: a fresh gradient is copied into its bucket
    as soon as it is made. torch 2.13's first step runs one bucket of every parameter; before
    the second forward DDP rebuilds 1 MiB + 25 MiB buckets in backward's order, once, and the
    gradients kept in place hold the old bucket until the new ones have them: two copies, for
    a moment before any activation exists (analysis.device_memory counts it). Every trainable
    parameter gets a gradient in every step (DDP waits for all of them), so a zero gradient and
    none give the optimizer the same."""
    from torch.nn.parallel import DistributedDataParallel

    for p in model.parameters() if accumulates else ():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    # buffers (rope tables, masks) are built from the spec and equal on every rank: no need to
    # broadcast them at every forward
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  forward_sync_buffers=False, gradient_as_bucket_view=True)
    ddp.register_comm_hook(None, _sum_gradients)
    return ddp


def shard_model(model: torch.nn.Module, device: torch.device, precision) -> torch.nn.Module:
    """`model` sharded in place with FSDP2 (`fully_shard`): each rank keeps 1/N of every
    parameter (and so of its gradient and optimizer state). Each transformer block is one unit,
    all-gathered just before its forward and its backward and freed after; the root unit holds
    the rest (embeddings, heads, final norms). Gradients are reduce-scattered as sums, as DDP's
    are here (`_sum_gradients`): the engine already divides the loss by the units of the whole
    step on all ranks. Only SUM reaches the backend (gloo has no pre-multiplied sum). On CUDA a
    bf16/fp16 stage all-gathers and computes in that dtype and reduces gradients in fp32; on
    the CPU everything stays fp32 (autocast still applies as in one process)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from lmspec.compiler.modules.block import Block
    from lmspec.compiler.modules.parallel_block import ParallelBlock

    # the mesh of this run's device type (FSDP's default would be CUDA whenever there is a GPU)
    mesh = init_device_mesh(device.type, (world().size,))
    if precision.dtype is not None and precision.device_type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=precision.dtype, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    blocks = [m for m in model.modules() if isinstance(m, (Block, ParallelBlock))]  # one unit per layer
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=_reshards_after_forward(i, len(blocks)))
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for unit in (*blocks, model):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


@contextlib.contextmanager
def gathered(*models: torch.nn.Module | None):
    """Every FSDP unit of `models` (sharded by `shard_model`; others pass through) gathered whole
    on every rank for the duration, and kept so across forward passes: a rank may then run as
    many forward passes as it likes without the others (an rl stage's generation, where each rank
    stops when its own responses end; an evaluation on rank 0 alone). Collective on entry (every
    rank all-gathers); on exit each unit is resharded and reshards after its forward again as
    `shard_model` set it. No gradients may flow inside (backward passes belong outside)."""
    from torch.distributed.fsdp import FSDPModule

    roots = [m for m in models if isinstance(m, FSDPModule)]
    if not roots:
        yield
        return
    blocks = [[u for u in root.modules() if isinstance(u, FSDPModule) and u is not root] for root in roots]
    for block in (block for bs in blocks for block in bs):
        block.set_reshard_after_forward(False, recurse=False)
    units = [unit for root, bs in zip(roots, blocks) for unit in (root, *bs)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for bs in blocks:
            for i, block in enumerate(bs):
                block.set_reshard_after_forward(_reshards_after_forward(i, len(bs)), recurse=False)


def _reshards_after_forward(i: int, blocks: int) -> bool:
    # the last block's backward comes right after its forward: keeping it gathered saves an all-gather
    return i < blocks - 1


def sharded_grad_scaler():
    """fp16 loss scaling for a sharded model: torch's ShardedGradScaler agrees across ranks on
    whether a step overflowed (each rank sees only its slices of the gradients)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler("cuda")


def resolve_parallel(report, stage: str, parallel: str, device: torch.device) -> str:
    """What `parallel: auto` means for this run, the same on every rank: fsdp when the stage
    fits one GPU only sharded, by the per-device estimate `lmspec check --devices N
    --device-memory SIZE` prints (the smallest GPU of the run's), else ddp. On the CPU there is
    no device memory to fit: ddp. Explicit ddp and fsdp stay as written."""
    size = world().size
    if parallel != "auto" or size == 1 or device.type != "cuda":
        return "ddp" if parallel == "auto" else parallel
    from lmspec.compiler.rules_parallel import Hardware, stage_plan

    own = float(torch.cuda.get_device_properties(device).total_memory)
    smallest = _min_over_ranks(own)
    plan = stage_plan(report, stage, Hardware(devices=size, device_memory=f"{int(smallest)}B"))
    return plan.chosen if plan is not None and plan.chosen in ("ddp", "fsdp") else "ddp"


def _min_over_ranks(value: float) -> float:
    if not _initialised() or world().size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def split_batch(batch: int, grad_accum: int, size: int, *, stage: str) -> int:
    """Sequences per micro-batch per rank; a RunError with the figures when they do not divide
    (a spec checked with the world size known has been told at check time, `check_world`)."""
    if batch % (grad_accum * size):
        raise RunError(f"stage '{stage}': batch ({batch}) does not split over {size} process{'es' * (size != 1)} "
                       f"x grad_accum ({grad_accum}) = {grad_accum * size} equal micro-batches",
                       help=_split_help(batch, grad_accum, size))
    return batch // (grad_accum * size)


def _split_help(batch: int, grad_accum: int, size: int) -> str:
    from lmspec.compiler.rules_parallel import split_help

    return split_help(batch, grad_accum, size, world="run with --nproc")


def rollout_split(name: str, spec, size: int, *, world: str = "run with --nproc") -> list[tuple[tuple, str, str]]:
    """`compiler.rules_parallel.rollout_split`: what keeps an rl stage's rollouts from
    splitting over `size` processes (`lmspec check --devices N` says the same)."""
    from lmspec.compiler.rules_parallel import rollout_split as split

    return split(name, spec, size, world=world)


def split_rollouts(name: str, spec, size: int) -> tuple[int, int | None]:
    """(rollouts per rank of one step, of one minibatch) for rl stage `name`; a RunError with the
    figures when they do not split (a spec checked with the world size known was told so at
    check time, `check_world`)."""
    problems = rollout_split(name, spec, size)
    if problems:
        _, message, help = problems[0]
        raise RunError(message, help=help)
    mb = spec.minibatch
    return spec.rollouts.per_step // size, (None if mb is None else mb // size)


# ----------------------------------------------------------------------------- checks before launching


def check_world(report, schedule, selected: list[str], size: int) -> list:
    """Located errors for what the world size makes impossible, before any process starts: a
    train stage's global batch that does not split into grad_accum x world-size equal
    micro-batches, as `lmspec check --devices N` says it (`compiler.rules_parallel.world_diagnostics`);
    an rl stage's rollouts whose prompt groups or minibatches do not split over the ranks
    (`rollout_split`). Both LMS089, the code of the batch rules at check time."""
    from lmspec.compiler.rules_parallel import world_diagnostics
    from lmspec.diagnostics import Diagnostic

    stages = [plan.name for plan in schedule if plan.name in selected and plan.kind == "train"]
    out = world_diagnostics(report, stages, size)
    for plan in schedule:  # rl stages: prompt groups and minibatches that split over the ranks
        if plan.name in selected and plan.kind == "rl":
            block = report.spec.resolved.blocks[plan.name]
            out += [Diagnostic("error", "LMS089", message, block.span_of(path), [], help)
                    for path, message, help in rollout_split(plan.name, report.spec.blocks[plan.name], size)]
    return out


#: the stage kinds that run across ranks: train (DDP or FSDP2), rl (DDP, its rollouts split
#: across the ranks), feedback (its prompts split, its pairs judged on rank 0)
ACROSS_RANKS = ("train", "rl", "feedback")


def refuse_single_process_stages(schedule, selected: list[str], size: int) -> None:
    """A stage of a kind that does not run across ranks (a kind added before its distributed
    path) is refused before anything runs with a world size above 1, naming the stage."""
    if size == 1:
        return
    for plan in schedule:
        if plan.name in selected and plan.kind not in ACROSS_RANKS:
            raise RunError(f"stage '{plan.name}' is a {plan.kind} stage, which runs in one process; this run asked "
                           f"for {size}",
                           help="run the spec with --nproc 1, or run its other stages alone with "
                                "`--only STAGE --nproc N` (docs/scaling.md)")


def check_port(port: int) -> None:
    """The rendezvous port must be free on this machine, or the workers would wait on another
    job's store."""
    if not 0 < port < 65536:
        raise RunError(f"--port {port}: expected a port in 1..65535", help="leave --port out to take a free one")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise RunError(f"port {port} is in use on this machine (another run, or torchrun?)",
                               help="choose another with --port, or leave --port out to take a free one") from None
            raise RunError(f"cannot use port {port}: {err.strerror or err}",
                           help="choose another with --port, or leave --port out to take a free one") from None


# ----------------------------------------------------------------------------- failures


def report_failure(message: str, help: str | None = None, *, kind: str = "error") -> None:
    """Write this worker's error where torch's elastic agent reads it (TORCHELASTIC_ERROR_FILE):
    `launch` (and torchrun's summary) then name it with its rank. `kind` "lost_peers" marks an
    error that is the consequence of another rank's death."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    from lmspec.runtime.checkpoint import write_json_atomic

    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all: the agent may read the file the moment it exists (an empty one
        # made it fail parsing it, and the run's error with it)
        write_json_atomic(Path(path), {"message": message, "timestamp": int(time.time()),
                                       "lmspec": {"message": message, "help": help, "kind": kind}})


def lost_peers(err: BaseException) -> bool:
    """A collective that failed because another rank is gone (gloo: the connection closed)."""
    import torch.distributed as dist

    text = str(err).lower()
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        s in text for s in ("connection closed by peer", "connection reset", "broken pipe", "gloo", "nccl"))


def _describe_failures(failures: dict, size: int, run_path: Path | None) -> RunError:
    """The root cause among the failed ranks. In order: a rank that stopped with its own error;
    one killed by a signal the agent does not send (SIGKILL: the OOM killer, `kill -9`; a
    crash); one that exited with a traceback; one the agent stopped (SIGTERM, SIGINT); last,
    the ranks that failed only because they lost another."""
    import signal

    resume = f"resume with `lmspec run --resume {run_path}` (with any --nproc)" if run_path else None
    stopping = {-signal.SIGTERM, -signal.SIGINT}

    def order(entry):
        rank, f, info = entry
        kind = info.get("kind")
        if kind == "lost_peers":
            return 4, rank
        if info.get("message"):
            return 0, rank
        if f.exitcode < 0:
            return (3 if f.exitcode in stopping else 1), rank
        return 2, rank

    entries = []
    for rank, f in failures.items():
        info = f.error_file_data.get("lmspec") if isinstance(f.error_file_data, dict) else None
        entries.append((rank, f, info or {}))
    rank, f, info = min(entries, key=order)
    others = sorted(r for r, _, _ in entries if r != rank)
    also = (f" (rank{'s' * (len(others) > 1)} {', '.join(map(str, others))} stopped with it)" if others else
            " (the other ranks were stopped)")
    if info.get("message") and info.get("kind") != "lost_peers":
        return RunError(f"rank {rank} of {size} stopped: {info['message']}", help=info.get("help") or resume)
    if f.exitcode < 0:
        return RunError(f"rank {rank} of {size} was killed by {f.signal_name()} (pid {f.pid}); the run stopped{also}",
                        help=resume)
    if info.get("message"):  # every rank lost the others: the cause is outside them (a network, a host)
        return RunError(f"rank {rank} of {size} stopped: {info['message']}{also}", help=resume)
    return RunError(f"rank {rank} of {size} exited with code {f.exitcode} (its traceback is above); the run "
                    f"stopped{also}", help=resume)


# ----------------------------------------------------------------------------- launching


def _threads_per_worker(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_agent():
    """The agent logs every failure to stderr; `launch` says it once, in lmspec's words."""
    import torch.distributed.launcher.api  # noqa: F401 - creates the agent's loggers, each with its own level

    logs = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
            if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher"))]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def launch(nproc: int, argv: list[str], *, port: int | None = None, cpu: bool = True, progress: str = "plain",
           run_path: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run `python -m lmspec ARGV` in `nproc` workers on this machine through torch's elastic
    launch API (a c10d rendezvous on `port`, else a free one: torchrun's --standalone). Returns
    when every worker has finished; raises RunError naming the rank that failed, or saying the
    run was interrupted. `env`: more variables for the workers."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if port is not None:
        check_port(port)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint=f"localhost:{port or 0}", max_restarts=0,
                          monitor_interval=0.1)
    env = {**(env or {}), LAUNCHED: "1", WORKER_PROGRESS: progress}
    if cpu and "OMP_NUM_THREADS" not in os.environ:  # N workers x all cores each would fight for them
        env["OMP_NUM_THREADS"] = str(_threads_per_worker(nproc))
    try:
        with _environment(env), _quiet_agent():
            elastic_launch(config, sys.executable)("-m", "lmspec", *argv)
    except ChildFailedError as err:
        failure = _describe_failures(err.failures, nproc, run_path)
        _mark_failed(run_path, failure.message)
        raise failure from None
    except SignalException as err:
        raise RunError(f"interrupted ({signal_name(err.sigval)}): the workers stopped after the step in progress",
                       help=f"resume with `lmspec run --resume {run_path}`" if run_path else None) from None


def signal_name(sig) -> str:
    import signal

    try:
        return signal.Signals(sig).name
    except (ValueError, TypeError):
        return str(sig)


def _mark_failed(run_path: Path | None, message: str) -> None:
    """A rank killed outright leaves the manifest saying `running` (or rank 0, losing it, `failed`
    without saying why): the launcher records which rank failed and how."""
    from lmspec.runtime.rundir import RunDir

    if run_path is None or not (Path(run_path) / "manifest.json").is_file():
        return
    with contextlib.suppress(OSError, RunError, ValueError):
        rd = RunDir(Path(run_path))
        if rd.manifest.get("status") in ("running", "failed"):
            rd.update_manifest(status="failed", failure=message, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

