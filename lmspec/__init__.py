"""lmspec: a declarative experiment language for language models."""

__version__ = "0.1.0"
