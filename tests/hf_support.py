"""Shared helpers of the Hugging Face tests: a tiny random model saved by transformers, and
the checks every imported family passes (the written spec checks with transformers' parameter
count; the logits agree within 1e-4 on a right-padded batch; greedy generation token for token),
the fixture that saves a test file's families once, and the same for exports of lmspec models.
Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import save_file

from lmspec.compiler.analysis import count_parameters, meta_check
from lmspec.compiler.api import check_text, load_arch
from lmspec.compiler.build import build_model
from lmspec.compiler.hf import arch_from_hf_config, export_hf, load_hf_model, read_hf_config, spec_from_hf

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


def assert_generation_matches(path: Path) -> None:
    """Greedy generation with the KV cache equals transformers' generate token for token, on three
    left-padded prompts of 7 tokens (one unpadded, one with 3 pads, one with a single real token)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids = ids.masked_fill(mask == 0, 0)
    _, model = load_hf_model(path)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=8, temperature=0)
    with torch.no_grad():
        theirs = hf_model(path).generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                                         do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(ours, theirs)


def perturbed_model(spec: str, name: str):
    """The spec's model with every parameter moved off its initial value (norms are not all
    one, biases not all zero), so a weight written under the wrong name shows in the logits."""
    arch = load_arch(spec, name)
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return arch, model.eval()


def exported_fixture(spec: str, names, directory: str):
    """A module-scoped fixture: {name: (arch, model, dir)} for each of `names`, the spec's model
    (`perturbed_model`) exported by export_hf into its own directory."""
    @pytest.fixture(scope="module")
    def exported(tmp_path_factory) -> dict[str, tuple]:
        root = tmp_path_factory.mktemp(directory)
        out = {}
        for name in names:
            arch, model = perturbed_model(spec, name)
            config, tensors = export_hf(arch, model.state_dict(), special_ids={"bos": 1, "eos": 2})
            (root / name).mkdir()
            (root / name / "config.json").write_text(json.dumps(config))
            save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
            out[name] = (arch, model, root / name)
        return out

    return exported


def hf_exported(path: Path):
    """transformers' model of an export, asserting that every tensor it wants is in the file and
    nothing else is."""
    cls = getattr(transformers, json.loads((path / "config.json").read_text())["architectures"][0])
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()
