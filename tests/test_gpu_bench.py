"""benchmarks/gpu/bench_gpu.py, the GPU benchmark, in its reduced CPU form: every section's
code runs on tiny shapes, so the script is ready whenever a GPU is at hand."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reduced_gpu_benchmark_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "r.json"
    code = _bench().main(["--reduced", "--out", str(out)])
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert code == 0, {k: v.get("error") for k, v in sections.items()}
    assert result["reduced"] is True
    train = sections["train"]
    assert train["tokens_per_s"] > 0 and train["median_step_s"] > 0 and train["mfu"] is None  # no GPU peak
    cases = sections["memory"]["cases"]
    assert len(cases) == 3
    for case in cases:  # the estimate `check` prints, in parts that add up
        parts = case["estimate"]
        assert case["estimate_bytes"] >= sum(parts.values()) > 0
    fsdp = sections["fsdp"]  # FSDP2 in a process group of one (gloo here, NCCL on the GPU)
    assert fsdp["sharded_parameters"] > 0 and len(fsdp["losses"]) == 2 and fsdp["finite"]
    gen = sections["generate"]
    assert gen["same_tokens"] is True and gen["lmspec_tokens_per_s"] > 0 and gen["hf_tokens_per_s"] > 0
    flex = sections["flex"]["kernels"]  # the CPU trains the sdpa stage; FlexAttention only runs forward here
    assert list(flex) == ["sdpa"] and flex["sdpa"]["estimate_bytes"] > 0 and flex["sdpa"]["tokens_per_s"] > 0
    assert flex["sdpa"]["flex_forward_max_abs_diff"] < 1e-5


def test_run_sh_refuses_a_machine_without_cuda():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real benchmark instead")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "/dev/null"], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr or "needs lmspec" in done.stderr
