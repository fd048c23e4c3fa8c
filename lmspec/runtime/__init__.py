"""The runtime: data, tokenizers, objectives, the training engine, stages, run directories.

    from lmspec.runtime import run, open_run
    r = run("specs/quickstart.lmspec", out="runs/quick")
    r.model("pretrain"); r.tokenizer("pretrain").encode("Once upon a time")

Names are imported lazily so that `import lmspec.runtime` stays cheap.
"""

__all__ = ["run", "resume", "open_run", "Run", "RunError"]


def __getattr__(name: str):
    if name == "RunError":
        from lmspec.runtime.errors import RunError

        return RunError
    if name in __all__:
        from lmspec.runtime import api as _run

        return getattr(_run, name)
    raise AttributeError(f"module 'lmspec.runtime' has no attribute {name!r}")
