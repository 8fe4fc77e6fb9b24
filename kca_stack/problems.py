"""What is wrong with the data: each problem names its field and the fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where it is, what is wrong, and what to do about it."""

    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}. Fix: {self.fix}."


class StackError(Exception):
    """Raised before any operation is queued when the data describes an impossible stack."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the stack data has {len(problems)} problem(s):\n{lines}")
