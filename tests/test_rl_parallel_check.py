"""An rl stage's memory per device under its `parallel`, before anything launches: ddp (every
model whole on each device) or fsdp (the policy and PPO's value model sharded with FSDP2 as a
train stage's model is, gathered whole for the rollouts; the frozen models whole on each), and
what `parallel: auto` chooses from them (`rules_parallel.stage_plan`, which the runtime calls).

The gathered whole policy and its KV cache are measured on a real `fully_shard` model in a fake
process group of 8, in fp32 and under a bf16 mixed-precision policy.
"""

from __future__ import annotations

import pytest
import torch
from test_analysis import decoder
from test_parallel_check import CRITIC, PRELUDE

from lmspec.compiler.analysis import count_parameters, device_memory, kv_cache_memory, training_memory
from lmspec.compiler.analysis.memory import RLDeviceMemory, rl_device_memory
from lmspec.compiler.api import check_text
from lmspec.compiler.costs import value_arch, human_bytes, spec_figures
from lmspec.compiler.rules_parallel import Hardware, device_plans, render_device_plans, stage_plan

# GPT-2 small (163M parameters, 650 MB in fp32) as a GRPO policy: 8 rollouts and minibatches of 2 on
# each of 8 devices. Replicated it needs 3.31 GiB per device; sharded 1.16 GiB (the reference in bf16, as the sharded policy computes).
GRPO = PRELUDE + CRITIC + """
train pre { model: gpt, objective: clm, data: text }
rl r { policy: gpt from pre, reward: j, algorithm: grpo(group: 4)EXTRA,
       rollouts { prompts: text.prefixes(tokens: 8), per_step: 64 }, minibatch: 16, checkpoint_activations: true,
       device_memory: "MEMORY" }
"""


def grpo(memory: str = "2GB", extra: str = "", **hardware):
    return check_text(spec(memory, extra), "spec.lmspec", **hardware)


def spec(memory: str = "2GB", extra: str = "", algorithm: str = "grpo(group: 4)") -> str:
    return GRPO.replace("MEMORY", memory).replace("EXTRA", extra).replace("grpo(group: 4)", algorithm)


def only(report, code: str):
    found = [d for d in report.diagnostics if d.code == code]
    assert len(found) == 1, [f"{d.code} {d.message}" for d in report.diagnostics]
    return found[0]


def test_auto_shards_a_policy_that_fits_its_devices_only_sharded():
    report = grpo(devices=8)
    plan = device_plans(report)["r"]
    assert (plan.parallel, plan.chosen, plan.devices) == ("auto", "fsdp", 8)
    assert plan.replicated.total > plan.device_memory  # 3.31 GiB of 1.86
    assert plan.memory is plan.sharded and plan.fits and plan.share < 0.9
    assert report.ok, [d.message for d in report.diagnostics]
    table = render_device_plans(device_plans(report))
    (row,) = [line for line in table.splitlines() if line.split()[:2] == ["r", "8"]]
    assert row.split()[:5] == ["r", "8", "auto", "->", "fsdp"] and "yes 62%" in row
    assert "  r (fsdp): updates 865 MiB or rollouts 560 MiB or the build before sharding 622 MiB, + frozen models " \
           "324 MiB: 1.16 GiB per device" in table


def test_the_runtime_gets_the_same_choice_from_stage_plan():
    report = grpo("80GB", devices=8)  # the keys' memory is what the runtime replaces with its GPUs'
    assert stage_plan(report, "r", Hardware(devices=8, device_memory="2GB")).chosen == "fsdp"
    assert stage_plan(report, "r", Hardware(devices=8, device_memory="80GB")).chosen == "ddp"  # fits replicated
    assert stage_plan(report, "r", Hardware(devices=8, device_memory="1GB")).chosen == "fsdp"  # fits neither way
    assert stage_plan(report, "r", Hardware(devices=8)).chosen == "ddp"  # 80GB from the key: roomy


def test_resolve_parallel_shards_an_rl_stage_on_gpus_it_fits_only_sharded(monkeypatch):
    import types

    from lmspec.runtime import distributed

    report = grpo("80GB", devices=8)
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, local_rank=0, size=8))
    monkeypatch.setattr(distributed, "_min_over_ranks", lambda value: value)
    cuda = torch.device("cuda", 0)
    for total, chosen in ((2 * 10**9, "fsdp"), (80 * 10**9, "ddp")):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda d, t=total: types.SimpleNamespace(total_memory=t))
        assert distributed.resolve_parallel(report, "r", "auto", cuda) == chosen
    assert distributed.resolve_parallel(report, "r", "auto", torch.device("cpu")) == "ddp"


def test_explicit_ddp_that_fits_only_sharded_is_lms121_at_the_key():
    report = grpo(extra=", parallel: ddp", devices=8)
    d = only(report, "LMS121")
    assert d.message == ("rl 'r' needs 3.31 GiB per device replicated on 8 devices (parallel: ddp), more than the "
                         "1.86 GiB a device has; sharded it needs 1.16 GiB")
    line = spec(extra=", parallel: ddp").splitlines()[d.span.line - 1]
    assert line.startswith("rl r {") and line[d.span.col - 1:].startswith("ddp,")
    assert d.help.startswith("use parallel: fsdp (the policy sharded, gathered whole for the rollouts), or auto")
    plan = device_plans(report)["r"]
    assert plan.chosen == "ddp" and plan.memory is plan.replicated
    assert "auto" not in render_device_plans({"r": plan})
    assert grpo(extra=", parallel: fsdp", devices=8).ok


def test_a_stage_that_does_not_fit_even_sharded_is_lms120_with_both_phases():
    report = grpo("1GB", extra=", parallel: fsdp", devices=8)
    d = only(report, "LMS120")
    assert d.message == ("rl 'r' needs 1.16 GiB per device even sharded over 8 devices (fsdp: the policy sharded, "
                         "gathered whole for the rollouts; the frozen models whole on each), more than the 954 MiB a "
                         "device has")
    assert d.notes[0].startswith("per device: updates weights 77.8 MiB + gathered 176 MiB + gradients 77.8 MiB + ")
    assert "; rollouts weights 77.8 MiB + optimizer 156 MiB + gathered whole 311 MiB + KV cache 15.8 MiB = 560 MiB; " \
           "and the frozen models whole 324 MiB: 1.16 GiB" in d.notes[0]
    d = only(grpo("1GB", devices=8), "LMS120")  # auto: as a train stage, fsdp when ddp does not fit
    assert d.message.startswith("rl 'r' needs 1.16 GiB per device even sharded over 8 devices")
    assert "use parallel: fsdp" not in d.help  # it does not fit that way either


def test_the_sharded_figures_part_by_part():
    report = grpo(devices=8)
    plan = device_plans(report)["r"]
    ddp, fsdp = plan.replicated, plan.sharded
    arch, critic = report.models["gpt"], report.models["critic"]
    P = count_parameters(arch).total
    shapes = dict(batch=2, seq_len=56, precision="bf16", checkpoint_activations=True)  # 16 / 8 rollouts per update
    alone = training_memory(arch, **shapes)
    one = device_memory(arch, world=8, parallel="fsdp", **shapes)
    assert isinstance(fsdp, RLDeviceMemory) and (fsdp.world, fsdp.batch) == (8, 2)
    # ddp: the policy whole, its gradients and optimizer state whole, the frozen models in the weights
    frozen = 4 * P + 4 * count_parameters(critic).total  # the reference and the reward (judge j's critic)
    assert ddp.weights == 4 * P + frozen and ddp.gradients == 4 * P and ddp.optimizer == alone.optimizer
    # fsdp: shards of the policy, its gradients and optimizer state (an eighth, padded), the root and
    # two blocks gathered in bf16 with their fp32 gradients, the frozen models whole beside them
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (one.weights, one.gradients, one.optimizer)
    assert fsdp.weights == 4 * P // 8  # GPT-2's rows all divide by 8: no padding
    assert (fsdp.gathered, fsdp.gradient_buffers, fsdp.weight_copies) == (one.gathered, one.gradient_buffers, 0)
    assert fsdp.activations == one.activations == alone.activations
    # the reference in bf16 beside the sharded policy (runtime.stages.rl), the reward model in fp32
    assert fsdp.frozen == frozen - 2 * P and fsdp.whole_model == 4 * P
    # the rollouts: the policy gathered whole in bf16 (every unit's padded shards), no gradients, and
    # the KV cache of the device's 8 rollouts in bf16: half the fp32 cache of the ddp figure
    assert fsdp.gathered_whole == 2 * 8 * (fsdp.weights // 4) == 2 * P
    assert fsdp.kv_cache == kv_cache_memory(arch, batch=8, seq_len=56, dtype_bytes=2).total
    per_rank = spec_figures(grpo(extra="", devices=1), meta=False)[0].stages["r"].rl.memory["kv_cache"]
    assert fsdp.kv_cache * 2 * 8 == per_rank  # fp32 cache of all 64 rollouts on one device
    assert fsdp.rollout == fsdp.weights + fsdp.optimizer + fsdp.gathered_whole + fsdp.kv_cache
    assert fsdp.total == fsdp.frozen + max(fsdp.training, fsdp.rollout, fsdp.whole_model) == \
        fsdp.frozen + fsdp.training
    # what sharding saves: 7/8 of the weights, gradients and optimizer state and the autocast copies,
    # and half the reference (bf16), less what it gathers
    saved = (ddp.weights - frozen - fsdp.weights) + (ddp.gradients - fsdp.gradients) + ddp.weight_copies \
        + (ddp.optimizer - fsdp.optimizer) - fsdp.gathered - fsdp.gradient_buffers + (frozen - fsdp.frozen)
    assert ddp.total - fsdp.total == saved + ddp.activations - fsdp.activations


def test_ppo_shards_the_value_model_too_and_gathers_both_for_the_rollouts():
    report = check_text(spec("4GB", algorithm="ppo"), "spec.lmspec", devices=8)
    plan, arch = device_plans(report)["r"], report.models["gpt"]
    assert plan.chosen == "fsdp"  # 5.33 GiB replicated, 2 GiB sharded
    shapes = dict(world=8, parallel="fsdp", batch=2, seq_len=56, precision="bf16", checkpoint_activations=True)
    policy, value = device_memory(arch, **shapes), device_memory(value_arch(arch), **shapes)
    m = plan.memory
    assert m.weights == policy.weights + value.weights and m.optimizer == policy.optimizer + value.optimizer
    assert m.gathered == policy.gathered + value.gathered
    assert m.gathered_whole == 2 * 8 * (policy.weights + value.weights) // 4  # runtime.distributed.gathered(both)
    assert m.whole_model == policy.whole_model + value.whole_model


def test_one_device_is_one_process_whatever_parallel_says():
    for extra in ("", ", parallel: fsdp", ", parallel: ddp"):
        report = grpo(extra=extra)  # the key's memory, no --devices
        plan = device_plans(report)["r"]
        figures = spec_figures(report, meta=False)[0].stages["r"]
        assert (plan.devices, plan.parallel, plan.chosen, plan.sharded, plan.replicated) == (1, "-", "one", None, None)
        assert plan.memory.total == figures.memory.total and not isinstance(plan.memory, RLDeviceMemory)
        assert only(report, "LMS120").message == ("rl 'r' needs 3.53 GiB on one device, more than the 1.86 GiB a "
                                                  "device has")


def test_the_json_has_both_phases():
    plan = device_plans(grpo(devices=8))["r"]
    out = plan.to_json()
    assert out["chosen"] == "fsdp" and out["memory_bytes"]["rollout"] == plan.memory.rollout
    assert out["memory_bytes"]["gathered_whole"] == plan.memory.gathered_whole and "fsdp_bytes" not in out
    assert device_plans(grpo("80GB", devices=8))["r"].to_json()["fsdp_bytes"] == plan.sharded.total
    assert human_bytes(plan.sharded.total) == "1.16 GiB"


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "bf16"])
def test_the_gathered_policy_and_its_kv_cache_match_fully_shard_in_a_fake_process_group_of_8(half):
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from lmspec.compiler.build import build_model
    from lmspec.compiler.modules.block import Block

    arch = decoder(2, d=36, ff=70, vocab=101, act="swiglu")  # rows that 8 does not divide
    estimate = rl_device_memory(arch, value=None, world=8, batch=2, seq_len=8, rollouts=2, frozen=0,
                                precision="bf16" if half else "fp32")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
    try:
        model = build_model(arch).eval()
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if half else MixedPrecisionPolicy()
        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block, mp_policy=policy, reshard_after_forward=False)  # as runtime.distributed.gathered
        fully_shard(model, mp_policy=policy)
        for unit in [m for m in model.modules() if isinstance(m, FSDPModule)]:
            unit.unshard()
        gathered = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
        assert estimate.gathered_whole == sum(gathered.values())
        cache = model.new_cache(2, 8)
        with torch.no_grad():
            model(torch.randint(0, arch.vocab, (2, 8)), cache=cache)
        kept = [t for layer in cache.layers for t in vars(layer).values()
                if torch.is_tensor(t) and t.is_floating_point()]
        assert {t.dtype for t in kept} == {torch.bfloat16 if half else torch.float32}
        assert estimate.kv_cache == sum(t.nbytes for t in kept)
    finally:
        dist.destroy_process_group()


def test_an_rl_stage_counts_its_updates_without_dropout():
    """rl updates run in eval mode (runtime.stages.rl): a policy with dropout keeps what the same
    policy without it keeps, under either parallelism; a train stage of it keeps more."""
    with_dropout = GRPO.replace("heads: 12 }", "heads: 12, dropout: 0.1 }", 1)
    assert with_dropout != GRPO
    figures = {}
    for name, text in (("plain", GRPO), ("dropout", with_dropout)):
        report = check_text(text.replace("MEMORY", "2GB").replace("EXTRA", ""), "spec.lmspec", devices=8)
        plan = device_plans(report)["r"]
        figures[name] = (spec_figures(report, meta=False)[0].stages["r"].memory.total, plan.replicated.total,
                         plan.sharded.total, spec_figures(report, meta=False)[0].stages["pre"].memory.total)
    assert figures["dropout"][:3] == figures["plain"][:3]
    assert figures["dropout"][3] > figures["plain"][3]  # the train stage draws dropout masks
