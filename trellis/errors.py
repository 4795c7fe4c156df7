"""Errors that point at the definition a person has to fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    matches = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


@dataclass(frozen=True)
class Problem:
    file: Path | None
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.file else "<definitions>"
        if self.line is not None:
            where += f":{self.line}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class DefinitionError(Exception):
    """One or more problems in the definitions; str() lists every one, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
