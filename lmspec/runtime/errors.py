"""The one error the runtime raises for bad input: what went wrong, where, and what to do.

`lmspec run` prints it as `lmspec: error: <message>` plus `  = help: <help>` and exits 1; a
traceback is kept for bugs. Data, tokenizers, checkpoints and run directories raise it.
"""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(Exception):
    def __init__(self, message: str, help: str | None = None):
        super().__init__(message)
        self.message, self.help = message, help

    def __str__(self) -> str:
        return self.message if not self.help else f"{self.message}\n  = help: {self.help}"
