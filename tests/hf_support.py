"""Shared helpers of the Hugging Face import tests: a tiny random model saved by transformers, and
the two checks every imported family passes (the written spec checks with transformers' parameter
count; the logits agree within 1e-4 on a right-padded batch), and the fixture that saves a test
file's families once. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from lmspec.compiler.analysis import count_parameters, meta_check
from lmspec.compiler.api import check_text
from lmspec.compiler.hf import arch_from_hf_config, load_hf_model, read_hf_config, spec_from_hf

VOCAB = 100
TOL = 1e-4


def save_tiny(root: Path, name: str, cls: Any, config: Any) -> Path:
    """Build `cls(config)` with seed 0, move every parameter off its init (norms of one, biases of
    zero would hide a missing or misplaced one), and save it as safetensors under root/name."""
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(root / name, safe_serialization=True)
    return root / name


def ckpts_fixture(families: dict[str, tuple[Any, Any]], name: str):
    """A module-scoped fixture `ckpts`: every family of `families` ({family: (class, config)})
    saved once by `save_tiny` under a temporary folder `name`, as {family: path}. A test file
    writes `ckpts = ckpts_fixture(FAMILIES, "bart")`."""

    @pytest.fixture(scope="module")
    def ckpts(tmp_path_factory) -> dict[str, Path]:
        root = tmp_path_factory.mktemp(name)
        return {family: save_tiny(root, family, cls, config) for family, (cls, config) in families.items()}

    return ckpts


def hf_model(path: Path):
    cls = getattr(transformers, read_hf_config(path)["architectures"][0])
    return cls.from_pretrained(path).eval()


def inputs(T: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 4 :] = 0  # the second row is right-padded
    return ids, mask


def outputs(out):
    return out.logits if getattr(out, "logits", None) is not None else (
        out.hidden if hasattr(out, "hidden") else out.last_hidden_state)


def assert_imports_exactly(path: Path) -> None:
    """The spec import-hf writes passes `check`, its arch equals the import's, its parameter count is
    transformers' to the parameter, and the meta-device wiring check agrees shape for shape."""
    report = check_text(spec_from_hf(path, "m"), "imported.lmspec")
    assert report.ok, [f"{d.code} {d.message}" for d in report.diagnostics]
    arch = report.models["m"]
    assert arch == arch_from_hf_config(read_hf_config(path), "m")
    assert count_parameters(arch).total == sum(p.numel() for p in hf_model(path).parameters())
    assert meta_check(arch, seq_len=8, check_unused=bool(arch.heads)) == []


def assert_logits_match(path: Path, tol: float = TOL) -> None:
    """lmspec's model and transformers' give the same logits (or hidden states) within tol, on a
    plain batch and on a right-padded one (compared where the tokens are real)."""
    ids, mask = inputs()
    arch, model = load_hf_model(path)
    hf = hf_model(path)
    # an encoder-decoder reads the padded batch in its encoder and 7 other tokens in its decoder
    extra = {"decoder_input_ids": torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
             } if arch.arch == "encoder_decoder" else {}
    with torch.no_grad():
        torch.testing.assert_close(outputs(model(ids, **extra)), outputs(hf(ids, **extra)), atol=tol, rtol=0)
        real = mask.bool() if not extra else torch.ones(2, 7, dtype=torch.bool)  # decoder rows are all real
        ours = outputs(model(ids, attention_mask=mask, **extra))
        theirs = outputs(hf(ids, attention_mask=mask, **extra))
        torch.testing.assert_close(ours[real], theirs[real], atol=tol, rtol=0)
