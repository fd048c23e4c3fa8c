"""lmspec: a declarative experiment language for language models.

The front door (`lmspec.check_file("specs/gpt.lmspec")`) is `lmspec.compiler.api`; its names are
re-exported here lazily, so `import lmspec` stays cheap and never imports torch.
"""

__version__ = "0.1.0"

__all__ = ["parse", "resolve", "validate", "check", "check_file", "check_text", "load_arch", "CheckReport",
           "LmspecError"]


def __getattr__(name: str):
    if name == "LmspecError":
        from lmspec.diagnostics import LmspecError

        return LmspecError
    if name in __all__:
        from lmspec.compiler import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmspec' has no attribute {name!r}")
