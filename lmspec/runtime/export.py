"""`lmspec export-hf`: a trained stage of a run directory -> a Hugging Face model directory.

    export_run("runs/quick", "hf/quick")       # the last finished stage that trained a model
    export_run("runs/quick", "hf/sft", stage="sft")

The directory gets `config.json`, `model.safetensors` and the tokenizer, so that
`AutoModelForCausalLM.from_pretrained(dir)` (or the family's class) and
`AutoTokenizer.from_pretrained(dir)` give the run's model and ids. What the architecture
becomes is `lmspec.compiler.hf.export`'s business; this file knows the run directory, the
tokenizers and the files. Everything is written into a temporary directory beside the target
and renamed at the end: a failure leaves no half export, and an existing target is never
overwritten (an empty directory is accepted and replaced).

Tokenizers:
    bpe    its tokenizer.json, as it is (byte-level BPE: same ids in transformers)
    bytes  a tokenizer.json written here: a BPE with no merges whose vocabulary is the 256
           byte tokens <0x00>..<0xFF> (id = the byte, by byte fallback, as Llama spells bytes),
           then the specials in the spec's order and the sentinels, at lmspec's ids
    hf     its tokenizer.json, and the original directory's tokenizer_config.json,
           special_tokens_map.json and chat template when that directory is still there
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from lmspec.runtime.errors import RunError

__all__ = ["export_run", "export_tokenizer", "trained_stage"]

# files of an hf("dir") tokenizer copied as they are (a dir may hold a whole checkpoint: not the rest)
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def trained_stage(run, stage: str | None) -> str:
    """The stage to export: `stage` itself (it must have a model), or by default the last
    finished stage that trained a model."""
    if stage is not None:
        stage = run.resolve_stage(stage)  # an unknown name: RunError with a suggestion
        if not _has_model(run, stage):
            raise RunError(f"stage '{stage}' of {run.path} has no trained model to export",
                           help="name a stage that trains a model (train, rl), or run it first")
        return stage
    done = [s for s in run.stages if run.status(s).get("status") == "finished" and _has_model(run, s)]
    if not done:
        raise RunError(f"{run.path}: no finished stage has trained a model yet",
                       help="wait for a stage to finish, or name one with --stage to export its latest checkpoint")
    return done[-1]


def _has_model(run, stage: str) -> bool:
    sdir = run.path / "stages" / stage
    record = sdir / "final" / "artifacts.json"
    if record.is_file():
        return "weights" in json.loads(record.read_text()).get("files", {})
    return (sdir / "arch.json").is_file()  # not finished: a model exists once it has an arch


def _arch(run, stage: str):
    from lmspec.compiler.arch import arch_from_dict

    sdir = run.path / "stages" / stage
    for path in (sdir / "final" / "arch.json", sdir / "arch.json"):  # as Run.model reads it
        if path.is_file():
            return arch_from_dict(json.loads(path.read_text()))
    raise RunError(f"stage '{stage}' of {run.path} has no model yet", help="run or resume it first")


def _target(out: str | Path) -> Path:
    target = Path(out)
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        what = "is a file" if not target.is_dir() else "exists and is not empty"
        raise RunError(f"{target} {what}: export never overwrites",
                       help="give a new directory (or an empty one) with -o, or remove this one first")
    return target


def export_run(run_dir: str | Path, out: str | Path, *, stage: str | None = None, log=None) -> Path:
    """Export a stage of a run directory to `out` as a Hugging Face model directory. Raises
    RunError for a bad run, stage or target, and HFExportError (before anything is written)
    for an architecture that no Hugging Face family expresses exactly."""
    from safetensors.torch import save_file

    from lmspec.compiler.hf.export import export_family, export_hf
    from lmspec.runtime.api import open_run

    run = open_run(run_dir)
    stage = trained_stage(run, stage)
    target = _target(out)
    arch = _arch(run, stage)
    model_type, cls = export_family(arch)  # refuse before loading any weight
    tokenizer = run.tokenizer(stage)
    model = run.model(stage)
    if log is not None and run.status(stage).get("status") != "finished":
        log(f"stage {stage} has not finished: exporting its latest good checkpoint")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        specials = export_tokenizer(tokenizer, tmp, context=arch.context, original=_hf_source(run, stage))
        config, tensors = export_hf(arch, model.state_dict(), special_ids=specials)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _fsync_tree(tmp)
        emptied = target.exists()
        if emptied:
            target.rmdir()  # empty (checked above); os.replace cannot replace a directory
        try:
            os.replace(tmp, target)
        except BaseException:
            if emptied:
                target.mkdir(exist_ok=True)  # leave the target as it was found
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log is not None:
        log(f"wrote {target}: {cls} (model_type {model_type}) from stage {stage}")
    return target


def _fsync_tree(directory: Path) -> None:
    """Every file on disk before the rename makes the export visible, with the permissions a
    new directory gets (mkdtemp and safetensors create theirs private; an export is for sharing)."""
    from lmspec.runtime.checkpoint import fsync_dir

    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    directory.chmod(0o777 & ~umask)
    fsync_dir(directory)


# ----------------------------------------------------------------------------- tokenizers


def _hf_source(run, stage: str) -> Path | None:
    """The directory an hf("dir") tokenizer was read from, if the spec names one and it is
    still there."""
    from lmspec.compiler.compile import spec_relative

    name = run.status(stage).get("tokenizer")
    resolved = run.path / "spec" / "resolved.json"
    if not name or not resolved.is_file() or not run.manifest.get("spec"):
        return None
    kind = json.loads(resolved.read_text()).get("blocks", {}).get(name, {}).get("kind", {})
    if not isinstance(kind, dict) or kind.get("kind") != "hf":
        return None
    path = spec_relative(kind["path"], run.manifest["spec"])
    path = path.parent if path.suffix == ".json" else path
    return path if path.is_dir() else None


def export_tokenizer(tokenizer, directory: Path, *, context: int | None = None,
                     original: Path | None = None) -> dict[str, int]:
    """Write `tokenizer` (an lmspec Tokenizer) into `directory` for transformers'
    AutoTokenizer: tokenizer.json and tokenizer_config.json. Returns its specials {name: id}.

    original: an hf tokenizer's own directory, whose config files are copied instead of
    writing tokenizer_config.json."""
    from tokenizers import Tokenizer as HFTokenizer

    directory = Path(directory)
    if tokenizer.kind == "bytes":
        _bytes_tokenizer(tokenizer).save(str(directory / "tokenizer.json"))
    else:
        tokenizer.save(directory)  # tokenizer.json, and lmspec.json: lmspec's own record, not HF's
        (directory / "lmspec.json").unlink(missing_ok=True)
    copied = [f for f in TOKENIZER_FILES if original is not None and (original / f).is_file()]
    for name in copied:
        shutil.copyfile(original / name, directory / name)
    if "tokenizer_config.json" not in copied:
        written = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        if context is not None:
            config["model_max_length"] = context
        for name, i in tokenizer.specials.items():
            config[f"{name}_token"] = written.id_to_token(i)
        if tokenizer.sentinels:
            config["additional_special_tokens"] = [written.id_to_token(i) for i in tokenizer.sentinels]
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dict(tokenizer.specials)


def _bytes_tokenizer(tokenizer):
    """lmspec's bytes tokenizer as a `tokenizers.Tokenizer` giving the same ids: no merges and
    no byte in the vocabulary under its own character, so byte fallback spells every UTF-8 byte
    b as the token <0xbb>, whose id is b."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models

    from lmspec.runtime.tokenizers import sentinel_token

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    names = [f"<{name}>" for name in tokenizer.specials] + [sentinel_token(i) for i in range(len(tokenizer.sentinels))]
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    wanted = list(tokenizer.specials.values()) + list(tokenizer.sentinels)
    got = [tok.token_to_id(n) for n in names]
    if got != wanted:  # added tokens take the next free ids: 256, 257, ... as BytesTokenizer does
        raise RunError(f"the bytes tokenizer's specials are at {wanted}, the exported ones would be at {got}",
                       help="this is a bug in lmspec's export: please report it")
    return tok
