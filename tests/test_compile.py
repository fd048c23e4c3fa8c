"""Compiling a spec: the schedule of stages, and each stage's model with its initial weights."""

import pytest
import torch
from safetensors.torch import save_model

from lmspec.compiler.api import check_file, check_text
from lmspec.compiler.compile import build_stage_model, compile_spec

TINY = """
lmspec 1
tokenizer tok { kind: bytes }
data stories { source: builtin("tiny-stories") }
model gpt { vocab: tok.vocab_size, context: 32, layers: 2, d_model: 32, heads: 4, position: rope,
            norm: rmsnorm, activation: swiglu, bias: false }
train pretrain { model: gpt, objective: clm, data: stories, steps: 2, batch: 2 }
train reward { model: gpt with head scalar, init: pretrain, objective: bradley_terry, data: prefs }
model critic { arch: encoder, vocab: tok.vocab_size, context: 32, layers: 1, d_model: 32, heads: 4,
               head: classifier(classes: 2) }
data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
train judge_fit { model: critic, objective: classify(label: "sentiment"), data: reviews, steps: 2 }
judge j { model: critic from judge_fit }
feedback prefs { policy: gpt from pretrain, prompts: stories.prefixes(tokens: 4, count: 8), max_new_tokens: 16, judge: j }
"""


def test_the_schedule_follows_the_experiment_graph():
    schedule = compile_spec(check_text(TINY))
    assert schedule.names() == ["pretrain", "judge_fit", "prefs", "reward"]
    reward = schedule["reward"]
    assert reward.init.stage == "pretrain" and reward.new_head
    assert [h.kind for h in reward.arch.heads] == ["scalar"]
    assert set(reward.after) == {"pretrain", "judge_fit", "prefs"}
    assert schedule["prefs"].init.stage == "pretrain"


def test_the_design_examples_compile():
    from pathlib import Path

    specs = Path(__file__).resolve().parents[1] / "specs"
    for name, first in (("gpt.lmspec", "pretrain"), ("rlaif.lmspec", "pretrain"), ("bert_t5.lmspec", "bert_pretrain")):
        assert compile_spec(check_file(specs / name)).names()[0] == first


def test_a_stage_starts_from_the_weights_of_the_stage_it_names(tmp_path):
    schedule = compile_spec(check_text(TINY))
    torch.manual_seed(0)
    pretrained = build_stage_model(schedule["pretrain"])
    save_model(pretrained, str(tmp_path / "pretrain.safetensors"))  # shared (tied) tensors stored once
    reward = build_stage_model(schedule["reward"], artifacts={"pretrain": tmp_path / "pretrain.safetensors"})
    body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("lm_head")}
    for key, value in body.items():
        assert torch.equal(reward.state_dict()[key], value), key
    assert reward.score is not None  # the fresh scalar head


def test_a_stage_without_its_source_weights_says_which_stage_to_run_first():
    schedule = compile_spec(check_text(TINY))
    with pytest.raises(FileNotFoundError, match="run 'pretrain' first"):
        build_stage_model(schedule["reward"], artifacts={})


def test_init_hf_loads_a_local_hugging_face_checkpoint(tmp_path):
    import transformers
    from lmspec.compiler.hf import spec_from_hf

    config = transformers.GPT2Config(vocab_size=320, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    text = spec_from_hf(tmp_path, name="small") + f"""
data d {{ source: builtin("tiny-stories") }}
tokenizer tok {{ kind: bpe(vocab: 300, train_on: d) }}
train finetune {{ model: small, init: hf("{tmp_path}"), objective: clm, data: d, steps: 1, batch: 1 }}
"""
    plan = compile_spec(check_text(text))["finetune"]
    assert plan.init.hf == str(tmp_path)
    model = build_stage_model(plan).eval()
    ids = torch.randint(0, 320, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-4)


def test_check_figures_count_sgd_momentum_state():
    from lmspec.compiler.costs import spec_figures

    base = TINY.replace("steps: 2, batch: 2 }", "steps: 2, batch: 2, optimizer: sgd(lr: 0.1, momentum: MOM) }", 1)
    plain, _ = spec_figures(check_text(base.replace("MOM", "0.0")), meta=False)
    heavy, _ = spec_figures(check_text(base.replace("MOM", "0.9")), meta=False)
    assert plain.stages["pretrain"].memory.optimizer == 0
    # one fp32 momentum buffer per parameter
    assert heavy.stages["pretrain"].memory.optimizer == 4 * heavy.models["gpt"].params.total


def test_the_package_front_door_checks_without_importing_torch():
    import subprocess
    import sys

    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "specs" / "gpt.lmspec"
    code = (f"import sys, lmspec; r = lmspec.check_file({str(spec)!r}); "
            "print(r.ok, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=spec.parents[1])
    assert out.stdout.split() == ["True", "False"]


def _tiny_gpt2_checkpoint(directory):
    import transformers

    config = transformers.GPT2Config(vocab_size=320, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)


def test_check_names_the_tensors_of_an_hf_checkpoint_that_does_not_fit(tmp_path, capsys):
    from lmspec.cli import main
    from lmspec.compiler.hf import spec_from_hf

    _tiny_gpt2_checkpoint(tmp_path / "ckpt")
    model = spec_from_hf(tmp_path / "ckpt", name="small").replace("d_ff: 128", "d_ff: 96")
    spec = tmp_path / "ft.lmspec"
    spec.write_text(model + '\ndata d { source: builtin("tiny-stories") }\n'
                    'tokenizer tok { kind: bpe(vocab: 300, train_on: d) }\n'
                    'train ft { model: small, init: hf("ckpt"), objective: clm, data: d, steps: 1, batch: 1 }\n')
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "error[LMS091]: init: the tensors in" in err
    assert "decoder.layers.0.mlp.up_proj.weight: expected (96, 32), found (128, 32)" in err
    # the path in the spec is relative to the spec file, so check finds the checkpoint from anywhere
    assert "ckpt" in err and "no such" not in err


def test_an_hf_checkpoint_that_fits_passes_check(tmp_path):
    from lmspec.compiler.compile import init_diagnostics
    from lmspec.compiler.hf import spec_from_hf

    _tiny_gpt2_checkpoint(tmp_path / "ckpt")
    spec = tmp_path / "ft.lmspec"
    spec.write_text(spec_from_hf(tmp_path / "ckpt", name="small") + '\ndata d { source: builtin("tiny-stories") }\n'
                    'tokenizer tok { kind: bpe(vocab: 300, train_on: d) }\n'
                    'train ft { model: small, init: hf("ckpt"), objective: clm, data: d, steps: 1, batch: 1 }\n')
    report = check_file(spec)
    assert report.ok and init_diagnostics(report) == []
    assert compile_spec(report)["ft"].init.hf == str(tmp_path / "ckpt")
