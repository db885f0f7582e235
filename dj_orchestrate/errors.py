"""Errors a user can fix. The CLI prints them as one line plus a hint and exits 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or configuration: says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
