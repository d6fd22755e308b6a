"""The project's one error policy.

A :class:`UserError` is something the user can fix: a bad flag, a bad file, a model resprobe cannot
decompose. The command line prints it as one line (``resprobe: error: <what> — <fix>``) and exits
with status 2, without a traceback (``--debug`` shows one). Every other exception is a bug and keeps
its traceback.

The subclasses also derive from ``ValueError`` so that API users who catch ``ValueError`` keep
working; the CLI never catches a bare ``ValueError``.
"""
from __future__ import annotations

__all__ = ["UserError", "UsageError", "NonFiniteError", "OutputError"]


class UserError(Exception):
    """An error the user can fix; ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} — {hint}")

    def one_line(self) -> str:
        return " ".join(str(self).split())


class UsageError(UserError, ValueError):
    """A flag or argument value out of range or inconsistent with another."""


class NonFiniteError(UserError, ValueError):
    """NaN or infinite weights, activations or logits."""


class OutputError(UserError, OSError):
    """An output folder that cannot be written, is locked by another run, or holds other results."""
