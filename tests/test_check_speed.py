"""What keeps `lmspec check` fast, asserted as structure rather than time: which modules a check
imports, and how the meta-pass cache behaves (docs/validation.md, "Speed and the meta cache").
Timings live in benchmarks/bench_check_cold.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmspec.compiler.analysis import meta_cache
from lmspec.compiler.analysis.meta import meta_pass
from lmspec.compiler.api import check_text, load_arch
from lmspec.compiler.compile import check_stages

ROOT = Path(__file__).resolve().parent.parent

SPEC = textwrap.dedent("""\
    lmspec 1
    tokenizer tok { kind: bytes }
    data text { source: builtin("tiny-stories") }
    model gpt { vocab: 320, context: 32, layers: 2, d_model: D_MODEL, heads: 4 }
    train pretrain { model: gpt, objective: clm, data: text, batch: 4 }
""")

# Runs the CLI in a fresh interpreter and reports, on its last line of stderr, its exit status
# and which heavy modules it imported; with --after-meta-op it then runs one element-wise op
# on the meta device, which imports torch._dynamo exactly when torch's own wrappers are intact.
DRIVER = textwrap.dedent("""\
    import json, sys
    after = sys.argv[1] == "--after-meta-op"
    from lmspec.cli import main
    status = main(sys.argv[2:] if after else sys.argv[1:])
    heavy = ("torch", "torch._dynamo", "sympy")
    seen = [m for m in heavy if m in sys.modules]
    restored = None
    if after:
        import torch
        torch.ones(2, device="meta") * 2
        restored = "torch._dynamo" in sys.modules
    print(json.dumps({"status": status, "imported": seen, "restored": restored}), file=sys.stderr)
""")


def spec_file(directory: Path, d_model: int = 32) -> Path:
    path = directory / f"gpt{d_model}.lmspec"
    path.write_text(SPEC.replace("D_MODEL", str(d_model)))
    return path


def cli(cache: Path, *args: str) -> tuple[dict, str]:
    """(what the driver reports, stdout) of `lmspec ARGS` in a fresh interpreter."""
    env = {**os.environ, "LMSPEC_CACHE_DIR": str(cache), "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120)
    assert out.stderr.strip(), out
    return json.loads(out.stderr.strip().splitlines()[-1]), out.stdout


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "meta").glob("*.json"))


def checked(path: Path, cache: Path) -> dict:
    """The figures and diagnostics of a full check of `path`, in this process, with the meta
    cache in `cache`."""
    report = check_text(path.read_text(), str(path))
    with meta_cache.use_meta_cache(cache / "meta"):
        _, figures = check_stages(report, meta=True)
    return {"figures": figures.to_json(), "diagnostics": [(d.code, d.message) for d in report.diagnostics]}


def test_no_meta_check_imports_no_torch(tmp_path):
    report, stdout = cli(tmp_path / "cache", "check", "--no-meta", str(spec_file(tmp_path)))
    assert report["status"] == 0 and "ok" in stdout
    assert report["imported"] == []
    assert not (tmp_path / "cache").exists()  # nothing ran, nothing was cached


def test_a_cold_check_skips_dynamo_and_a_warm_one_skips_torch(tmp_path):
    spec, cache = spec_file(tmp_path), tmp_path / "cache"
    cold, cold_out = cli(cache, "--after-meta-op", "check", "--json", str(spec))
    assert cold["status"] == 0
    assert "torch" in cold["imported"] and "torch._dynamo" not in cold["imported"]
    assert cold["restored"] is True  # torch's dynamo wrappers work as before once the pass is over
    assert len(entries(cache)) == 1

    warm, warm_out = cli(cache, "check", "--json", str(spec))
    assert warm["status"] == 0
    assert warm["imported"] == []  # a hit neither imports torch nor runs a pass
    assert json.loads(warm_out) == json.loads(cold_out)


def test_a_hit_is_what_the_check_reports_and_a_changed_architecture_misses(tmp_path):
    cache = tmp_path / "cache"
    small, wide = spec_file(tmp_path, 32), spec_file(tmp_path, 64)
    first = checked(small, cache)
    [entry] = entries(cache)
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "problems": ["planted in the cache"]}))
    again = checked(small, cache)
    assert ("LMS090", "model 'gpt' fails on the meta device at stage 'pretrain': planted in the cache") in \
        again["diagnostics"]  # the entry was read, not recomputed

    changed = checked(wide, cache)
    assert len(entries(cache)) == 2
    assert not any("planted" in message for _, message in changed["diagnostics"])
    assert changed["figures"]["models"]["gpt"]["params"] != first["figures"]["models"]["gpt"]["params"]


def test_results_with_and_without_the_cache_are_identical(tmp_path):
    spec, cache = spec_file(tmp_path), tmp_path / "cache"
    report = check_text(spec.read_text(), str(spec))
    _, figures = check_stages(report, meta=True)  # no cache at all
    uncached = {"figures": figures.to_json(), "diagnostics": [(d.code, d.message) for d in report.diagnostics]}
    assert checked(spec, cache) == uncached  # a miss, stored
    assert checked(spec, cache) == uncached  # a hit


class Planted:
    """A pickle that, if ever loaded, would write a file: the cache must never unpickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


@pytest.mark.parametrize("corruption", ["binary", "truncated", "nested", "wrong-shape", "other-key", "pickle"])
def test_a_corrupt_entry_is_ignored_and_rewritten(tmp_path, corruption):
    import pickle

    spec, cache, marker = spec_file(tmp_path), tmp_path / "cache", tmp_path / "executed"
    expected = checked(spec, cache)
    [entry] = entries(cache)
    good = json.loads(entry.read_text())
    entry.write_bytes({
        "binary": b"\xff\xfe\x00garbage",
        "truncated": entry.read_bytes()[:20],
        "nested": b"[" * 200_000 + b"]" * 200_000,  # deeper than the JSON parser recurses
        "wrong-shape": json.dumps({**good, "problems": "not a list"}).encode(),
        "other-key": json.dumps({**good, "key": "0" * 64, "problems": ["from another entry"]}).encode(),
        "pickle": pickle.dumps(Planted(marker)),
    }[corruption])
    assert checked(spec, cache) == expected
    assert json.loads(entry.read_text()) == good  # rebuilt by the pass that ran again
    assert not marker.exists()


def test_the_library_uses_no_cache_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSPEC_CACHE_DIR", str(tmp_path))
    arch = load_arch(spec_file(tmp_path).read_text())
    assert meta_pass(arch, batch=1, seq_len=8).problems == []
    assert not (tmp_path / "meta").exists()


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(meta_cache, "MAX_ENTRIES", 3)
    for i in range(5):
        meta_cache.store(tmp_path, f"{i:064x}", [], [f"p{i}"])
        os.utime(tmp_path / f"{i:064x}.json", ns=(i * 10**9, i * 10**9))
    assert meta_cache.load(tmp_path, f"{2:064x}") == ([], ["p2"])  # used: now the newest
    meta_cache.store(tmp_path, f"{5:064x}", [], ["p5"])
    kept = sorted(p.stem[-1] for p in tmp_path.iterdir())
    assert kept == ["2", "4", "5"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_an_unwritable_cache_is_only_a_miss(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    meta_cache.store(blocked / "meta", "0" * 64, [], [])  # cannot create the directory: no error
    assert meta_cache.load(blocked / "meta", "0" * 64) is None


def test_where_the_cache_lives(monkeypatch, tmp_path):
    for name in ("LMSPEC_CACHE_DIR", "LMSPEC_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert meta_cache.cache_directory() == tmp_path / "home" / ".cache" / "lmspec" / "meta"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert meta_cache.cache_directory() == tmp_path / "xdg" / "lmspec" / "meta"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec: ignore a relative path
    assert meta_cache.cache_directory() == tmp_path / "home" / ".cache" / "lmspec" / "meta"
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path / "runtime"))  # the runtime's data cache root
    assert meta_cache.cache_directory() == tmp_path / "runtime" / "meta"
    monkeypatch.setenv("LMSPEC_CACHE_DIR", str(tmp_path / "mine"))
    assert meta_cache.cache_directory() == tmp_path / "mine" / "meta"


def test_the_key_covers_what_the_pass_depends_on(tmp_path):
    arch = load_arch(spec_file(tmp_path).read_text())
    base = meta_cache.cache_key(arch, 4, 32, None, ("logits",))
    assert meta_cache.cache_key(arch, 4, 32, None, ("logits",)) == base
    assert len({base, meta_cache.cache_key(arch, 2, 32, None, ("logits",)),
                meta_cache.cache_key(arch, 4, 16, None, ("logits",)),
                meta_cache.cache_key(arch, 4, 32, None, ("hidden",)),
                meta_cache.cache_key(arch, 4, 32, None, None)}) == 5


def test_the_code_a_pass_runs_is_all_in_the_key():
    """The key hashes lmspec/compiler/: a pass must run no lmspec code from elsewhere."""
    code = textwrap.dedent("""\
        import sys
        from lmspec.compiler.arch import ArchConfig, LayerConfig, PositionConfig, StackConfig
        from lmspec.compiler.analysis.meta import meta_pass
        layer = LayerConfig(d_model=16, heads=2, kv_heads=2, head_dim=8, d_ff=32)
        arch = ArchConfig("m", "decoder", vocab=64, context=8, d_model=16, position=PositionConfig("rope"),
                          decoder=StackConfig((layer, layer)))
        assert meta_pass(arch).problems == []
        print("\\n".join(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "lmspec"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    hashed, files = ROOT / "lmspec" / "compiler", out.stdout.split()
    assert str(hashed / "build.py") in files  # the pass did run
    assert [f for f in files if not Path(f).is_relative_to(hashed)] == [str(ROOT / "lmspec" / "__init__.py")]


@pytest.mark.parametrize("digest", ["_code_digest", "_torch_digest"])
def test_the_key_changes_with_lmspec_code_and_torch(tmp_path, monkeypatch, digest):
    arch = load_arch(spec_file(tmp_path).read_text())
    before = meta_cache.cache_key(arch, 4, 32, None, ("logits",))
    monkeypatch.setattr(meta_cache, digest, lambda: "another build")
    assert meta_cache.cache_key(arch, 4, 32, None, ("logits",)) != before
