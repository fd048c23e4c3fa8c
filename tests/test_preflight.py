"""The run's pre-flight: what would fail when a stage starts and can be known before the run
directory exists (docs/keys.md, GAP 27: settings that depend on the device)."""

from __future__ import annotations

import pytest
import torch

from lmspec.runtime.api import run
from lmspec.runtime.engine import resolve_precision
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress

SPEC = """lmspec 1
model m {{ vocab: 262, context: 16, layers: 1, d_model: 16, heads: 2 }}
train t {{ model: m, objective: clm, data: d, steps: 2, batch: 2, compile: {compile}, precision: {precision} }}
data d {{ source: builtin("tiny-stories") }}
"""


def _spec(tmp_path, **keys):
    path = tmp_path / "s.lmspec"
    path.write_text(SPEC.format(**{"compile": "false", "precision": "fp32", **keys}))
    return path


def test_compile_without_a_cpp_compiler_stops_before_the_run_directory(tmp_path, monkeypatch):
    from torch._inductor import cpp_builder, exc

    def missing():
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(RunError) as err:
        run(_spec(tmp_path, compile="true"), out=tmp_path / "run", device="cpu", progress=Progress(quiet=True))
    assert "compile: true" in str(err.value) and "C++ compiler" in str(err.value)
    assert "compile: false" in err.value.help
    assert not (tmp_path / "run").exists()


def test_compile_with_a_compiler_passes_the_preflight():
    from lmspec.runtime.engine import check_compile

    check_compile(torch.device("cpu"), "t")  # this machine has g++ (torch.compile is tested elsewhere)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(RunError, match="Tesla T4 has no bfloat16 support") as err:
        resolve_precision("bf16", torch.device("cuda"))
    assert "fp16" in err.value.help
    assert resolve_precision("auto", torch.device("cuda")).name == "fp32"  # auto falls back quietly


def test_fp16_on_the_cpu_is_refused_before_the_run_directory(tmp_path):
    with pytest.raises(RunError, match="fp16 needs a GPU"):
        run(_spec(tmp_path, precision="fp16"), out=tmp_path / "run", device="cpu", progress=Progress(quiet=True))
    assert not (tmp_path / "run").exists()
