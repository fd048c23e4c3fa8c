"""Data-layer speed: tokenising a text corpus into the cache, and reading windows back.

Generates a corpus of Zipf-distributed pseudo-words (blank-line separated documents) in a
temporary directory, then prints MB/s of `prepare_dataset` with the bytes tokenizer and with a
bpe(vocab: 4096) tokenizer (trained first, on a slice of the corpus, and timed apart), and
tokens/s of `ExampleStream.take` for windows of 257 in batches of 32.

    python benchmarks/bench_data.py               # a 100 MB corpus
    python benchmarks/bench_data.py --mb 10       # quicker
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from lmspec.compiler.schema import DataSpec, TokenizerSpec  # noqa: E402
from lmspec.runtime.data import ExampleStream, prepare_dataset  # noqa: E402
from lmspec.runtime.objectives.base import Reads  # noqa: E402
from lmspec.runtime.tokenizers import build_tokenizer  # noqa: E402


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Documents of 50-400 Zipf-distributed words; returns the file's size in bytes."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(20_000)]
    target, written = int(megabytes * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            words = rng.zipf(1.2, size=200_000) % len(vocab)
            cuts = np.cumsum(rng.integers(50, 400, size=2_000))
            docs = [" ".join(vocab[w] for w in doc) + "." for doc in np.split(words, cuts[cuts < len(words)])]
            text = "\n\n".join(docs) + "\n\n"
            f.write(text)
            written += len(text.encode())
    return path.stat().st_size


def timed_prepare(spec: DataSpec, tok, *, spec_file: str, cache: Path, size: int, label: str):
    start = time.perf_counter()
    ds = prepare_dataset(spec, name="bench", spec_file=spec_file, tokenizer=tok, cache_dir=cache)
    seconds = time.perf_counter() - start
    tokens = ds.train.n_tokens() + ds.validation.n_tokens()
    print(f"{label:<28} {seconds:7.2f} s  {size / 1e6 / seconds:7.1f} MB/s  {tokens / seconds / 1e6:6.2f} M tokens/s  "
          f"({tokens:,} tokens, {len(ds.train) + len(ds.validation):,} documents)")
    start = time.perf_counter()
    prepare_dataset(spec, name="bench", spec_file=spec_file, tokenizer=tok, cache_dir=cache)
    print(f"{'  the same, cached':<28} {time.perf_counter() - start:7.2f} s  (hashes the file, opens the entry)")
    return ds


def bench_take(ds, *, length: int = 257, batch: int = 32, seconds: float = 3.0) -> None:
    stream = ExampleStream(ds.train, Reads("windows", length=length), seed=0)
    stream.take(0, batch)  # the first epoch's permutation is computed here
    position, start = batch, time.perf_counter()
    while time.perf_counter() - start < seconds:
        stream.take(position, batch)
        position += batch
    elapsed = time.perf_counter() - start
    tokens = (position - batch) * length
    print(f"{'take(windows 257, batch 32)':<28} {tokens / elapsed / 1e6:7.1f} M tokens/s  "
          f"({(position - batch) // batch / elapsed:,.0f} batches/s, {len(stream):,} windows an epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB")
    parser.add_argument("--train-mb", type=float, default=10.0, help="bpe is trained on a corpus this size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec_file, cache = str(tmp / "bench.lmspec"), tmp / "cache"
        start = time.perf_counter()
        size = write_corpus(tmp / "corpus.txt", args.mb)
        write_corpus(tmp / "train.txt", args.train_mb, seed=1)
        print(f"corpus: {size / 1e6:.1f} MB written in {time.perf_counter() - start:.1f} s\n")
        spec = DataSpec(source={"kind": "text", "path": "corpus.txt"})
        data = {"slice": DataSpec(source={"kind": "text", "path": "train.txt"})}

        tok = build_tokenizer(TokenizerSpec(kind={"kind": "bytes"}), name="bytes", spec_file=spec_file, data={},
                              cache_dir=cache)
        ds = timed_prepare(spec, tok, spec_file=spec_file, cache=cache, size=size, label="prepare, bytes")
        bench_take(ds)

        start = time.perf_counter()
        tok = build_tokenizer(TokenizerSpec(kind={"kind": "bpe", "vocab": 4096}), name="bpe", spec_file=spec_file,
                              data=data, cache_dir=cache)
        print(f"\n{'train bpe(vocab: 4096)':<28} {time.perf_counter() - start:7.2f} s  on {args.train_mb:g} MB")
        ds = timed_prepare(spec, tok, spec_file=spec_file, cache=cache, size=size, label="prepare, bpe(vocab: 4096)")
        bench_take(ds)


if __name__ == "__main__":
    main()
