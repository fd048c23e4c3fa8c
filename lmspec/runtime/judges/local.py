"""A local Hugging Face causal LM as the labeller's next-token model: `hf("dir")`.

The checkpoint is read with lmspec's own HF import (`lmspec.compiler.hf.load_hf_model`: config.json
and safetensors, nothing downloaded, no pickle) and its tokenizer.json through
`lmspec.runtime.tokenizers`. Queries run in batches, padded on the left so that every row's
last position is its last real token, in eval mode with no sampling: the same queries give the
same probabilities, whatever the batch.

The text is encoded as a completions server encodes a prompt: with the specials the
tokenizer.json's template puts before a text (Llama's <s>, Llama 3's <|begin_of_text|>; GPT-2
has none), so the local judge and the same weights served by vLLM read the same ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from .base import JudgeError
from .lm import LABELLER_OPTIONS, LMJudge, NextTokens, check_options, labeller_options, surface

__all__ = ["LocalLM", "local_judge", "from_options", "LOCAL_OPTIONS"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOP = 5  # the likeliest next tokens kept for error messages


class LocalLM:
    """Next-token probabilities from the causal LM checkpoint in `path`.

    device: where the model runs; dtype: float32 (default), bfloat16 or float16; batch_size:
    queries per forward pass. `judge` names the judge in error messages."""

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 judge: str = "judge"):
        from lmspec.compiler.hf import HFError, arch_from_hf_config, load_hf_model, read_hf_config
        from lmspec.compiler.hf.files import safetensors_files, tensor_shapes

        self.path = Path(path)
        self.where = f'hf("{self.path}")'
        self.visibility = ""  # the whole distribution is at hand
        at = f"judge '{judge}': {self.where}"
        if dtype not in DTYPES:
            raise JudgeError(f"{at}: dtype {dtype!r} is not one of {', '.join(DTYPES)}",
                             help="float32 gives the labels a server in float32 gives; bfloat16 halves the memory")
        if batch_size < 1:
            raise JudgeError(f"{at}: batch_size must be at least 1, got {batch_size}", help="try batch_size: 8")
        if not self.path.is_dir():
            raise JudgeError(f"{at}: {self.path} is not a directory" if self.path.exists()
                             else f"{at}: no such directory {self.path}",
                             help="point the judge at a local Hugging Face checkpoint directory (config.json, "
                                  "model.safetensors, tokenizer.json); nothing is downloaded")
        try:
            config = read_hf_config(self.path)
            arch = arch_from_hf_config(config, "judge", tensor_names=tensor_shapes(self.path).keys())
        except HFError as err:
            raise JudgeError(f"{at}: {err}", help="an LM judge needs a causal LM checkpoint that lmspec "
                                                  "imports: gpt2, llama or mistral, saved with safetensors") from None
        if arch.encoder is not None or arch.decoder is None or arch.head("lm") is None:
            shape = "an encoder-decoder" if arch.encoder is not None and arch.decoder is not None else \
                "an encoder" if arch.decoder is None else "a decoder without an LM head"
            saved = (config.get("architectures") or [config.get("model_type")])[0]
            raise JudgeError(f"{at} holds {shape} ({saved}), not a causal language model: an LM judge "
                             "reads the next token a decoder writes after the prompt",
                             help="use a causal LM checkpoint saved with its LM head (GPT2LMHeadModel, "
                                  "LlamaForCausalLM, MistralForCausalLM)")
        self.tokenizer, self.prefix_ids = _tokenizer(self.path, at)
        try:
            _, self.model = load_hf_model(self.path, device=device, dtype=DTYPES[dtype])
        except HFError as err:
            raise JudgeError(f"{at}: {err}", help="the checkpoint's tensors must match its config.json") from None
        vocab = self.model.lm_head.out_features
        if self.tokenizer.vocab_size > vocab:
            raise JudgeError(f"{at}: the tokenizer has {self.tokenizer.vocab_size} ids and the model's LM head "
                             f"{vocab}: they are not one model's", help="use the tokenizer.json saved with the model")
        self.device, self.batch_size, self.judge = device, batch_size, judge
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0  # masked out anyway
        self._surfaces: dict[str, list[int]] | None = None
        files = [self.path / "config.json", *safetensors_files(self.path), self.path / "tokenizer.json"]
        self.fingerprint = _files_sha256(files, extra={"dtype": dtype})

    def __repr__(self) -> str:
        return f"LocalLM({self.where}, device={self.device!r}, batch_size={self.batch_size})"

    @torch.no_grad()
    def next_tokens(self, queries: Sequence[tuple[str, str]], candidates: Sequence[str]) -> NextTokens:
        texts = [prompt + prefix for prompt, prefix in queries]
        ids = [self.prefix_ids + row for row in self.tokenizer.encode_batch(texts)]
        longest = max((len(row) for row in ids), default=0)
        if longest > self.model.context:
            q = max(range(len(ids)), key=lambda i: len(ids[i]))
            raise JudgeError(f"judge '{self.judge}' ({self.where}): a prompt of {len(ids[q])} tokens does not fit "
                             f"the model's context of {self.model.context} tokens",
                             help="shorten the template, the prompts or the responses (max_new_tokens), or use "
                                  "a judge with a longer context")
        wanted = [torch.tensor(self._ids_of(c), dtype=torch.long, device=self.device) for c in candidates]
        probs = torch.zeros(len(ids), len(candidates), dtype=torch.float64)
        top: list[list[tuple[str, float]]] = [[] for _ in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            p = self._last_position_probs([ids[i] for i in rows])  # (b, V) float64
            for c, wanted_ids in enumerate(wanted):
                if wanted_ids.numel():
                    probs[rows, c] = p[:, wanted_ids].sum(-1).cpu()
            values, indices = p.topk(min(TOP, p.shape[-1]), dim=-1)
            for row, vs, js in zip(rows, values.tolist(), indices.tolist()):
                top[row] = [(self.tokenizer.decode([j], skip_specials=False), v) for v, j in zip(vs, js)]
        return NextTokens(probs, top)

    def _last_position_probs(self, rows: list[list[int]]) -> torch.Tensor:
        """softmax of the logits after each row's last token: (b, V) float64, rows padded on the left."""
        T = max(len(r) for r in rows)
        x = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            x[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):] = True
        x, mask = x.to(self.device), mask.to(self.device)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # real tokens count from 0, as without padding
        logits = self.model(x, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]  # (b, V)
        return torch.softmax(logits.double(), dim=-1)

    def _ids_of(self, text: str) -> list[int]:
        """Every id whose token reads as `text` (surface spelling; specials never do)."""
        if self._surfaces is None:
            surfaces: dict[str, list[int]] = {}
            for i in range(self.tokenizer.vocab_size):
                token = self.tokenizer.decode([i])  # specials decode to ""
                if token:
                    surfaces.setdefault(surface(token), []).append(i)
            self._surfaces = surfaces
        return self._surfaces.get(text, [])


def local_judge(path: str | Path, *, name: str = "judge", device: str = "cpu", dtype: str = "float32",
                batch_size: int = 8, **labeller) -> LMJudge:
    """An `LMJudge` over the checkpoint in `path`; `labeller` holds LMJudge's keywords (task,
    template, principles, principles_mode, min_answer_mass)."""
    model = LocalLM(path, device=device, dtype=dtype, batch_size=batch_size, judge=name)
    return LMJudge(model, name=name, **labeller)


LOCAL_OPTIONS = ("path", "device", "dtype", "batch_size") + LABELLER_OPTIONS


def from_options(options: dict, *, name: str = "judge", root: str | Path | None = None) -> LMJudge:
    """A local LM judge from its options: `path` (relative to `root`, the spec's folder, when
    given) and LOCAL_OPTIONS' others."""
    where = f"judge '{name}'"
    check_options(options, LOCAL_OPTIONS, where)
    if "path" not in options:
        raise JudgeError(f"{where}: an LM judge needs the checkpoint's `path`", help='write hf("dir")')
    path = Path(options["path"])
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    backend = {k: options[k] for k in ("device", "dtype", "batch_size") if k in options}
    return local_judge(path, name=name, **backend, **labeller_options(options))


# ----------------------------------------------------------------------------- helpers


def _tokenizer(directory: Path, at: str):
    """The checkpoint's tokenizer.json as an lmspec tokenizer, and the ids its template puts
    before a text."""
    from tokenizers import Tokenizer as RustTokenizer

    from lmspec.runtime.tokenizers import HFBackedTokenizer, find_specials

    file = directory / "tokenizer.json"
    if not file.is_file():
        raise JudgeError(f"{at}: {directory} has no tokenizer.json, so the judge cannot read text",
                         help="lmspec reads fast (Rust) tokenizers; `AutoTokenizer.from_pretrained(dir)"
                              ".save_pretrained(dir)` with transformers writes one")
    try:
        tok = RustTokenizer.from_file(str(file))
        spec = json.loads(file.read_text(encoding="utf-8"))
    except Exception as err:  # the Rust side raises a bare Exception
        raise JudgeError(f"{at}: {file} is not a tokenizer.json the tokenizers library can read ({err})",
                         help="save it again with a recent `tokenizers` or transformers") from None
    tokenizer = HFBackedTokenizer(tok, "hf", find_specials(tok, directory), [])
    return tokenizer, _leading_specials(spec.get("post_processor"))


def _leading_specials(processor: dict | None) -> list[int]:
    """The ids a tokenizer.json's post-processor puts before a single text (its `single` template
    up to the text): what `tokenizer(text)` in transformers, and a server's completions, add."""
    if not isinstance(processor, dict):
        return []
    kind = processor.get("type")
    if kind == "Sequence":
        return [i for p in processor.get("processors", []) for i in _leading_specials(p)]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [processor["cls"][1]]
    if kind != "TemplateProcessing":
        return []
    ids: list[int] = []
    for piece in processor.get("single", []):
        if "Sequence" in piece:
            break
        token = piece.get("SpecialToken", {}).get("id")
        ids += processor.get("special_tokens", {}).get(token, {}).get("ids", [])
    return ids


def _files_sha256(files: list[Path], extra: dict) -> str:
    """sha256 of the files' contents: a judge's answers change with any of its weights."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
