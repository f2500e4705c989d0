"""User-facing errors and the issues they carry.

A user mistake (bad file, out-of-range value, unknown key) is a :class:`MediADError`: the CLI
and the app print its message and never a traceback. Checks that can find many problems at
once collect :class:`Issue` objects first, so a user sees every problem in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ImageError", "InputError", "Issue", "LeakageError", "MediADError", "Severity"]

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Issue:
    """One problem (or note) about an input, located as precisely as we can.

    Attributes:
        severity: ``error`` stops the input from being used; ``warning`` and ``info`` do not.
        message: what is wrong and what was expected.
        file: the file the problem is in.
        line: 1-based line of a CSV file (the header is line 1).
        subject: the subject id of the row, when known.
        field: the internal field (or source column) concerned.
        value: the offending value as read.
    """

    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    subject: str | None = None
    field: str | None = None
    value: Any = None

    def location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file + (f":{self.line}" if self.line is not None else ""))
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.subject:
            parts.append(f"subject {self.subject}")
        if self.field:
            parts.append(f"field {self.field}" + ("" if self.value is None else f"={self.value!r}"))
        return ", ".join(parts)

    def describe(self) -> str:
        """Where and what, without the severity (the caller says how serious it is)."""
        where = self.location()
        return f"{where}: {self.message}" if where else self.message

    def __str__(self) -> str:
        return f"{self.severity}: {self.describe()}"


class MediADError(Exception):
    """A problem the user can fix; its message is shown as is, without a traceback."""


class InputError(MediADError):
    """Invalid input data; carries every :class:`Issue` found, not only the first."""

    def __init__(self, issues: Sequence[Issue] | str, *, summary: str | None = None) -> None:
        if isinstance(issues, str):
            issues = [Issue("error", issues)]
        self.issues: list[Issue] = list(issues)
        errors = [i for i in self.issues if i.severity == "error"]
        head = summary or f"{len(errors)} problem(s) found"
        lines = [head] + [f"  - {i.describe()}" for i in errors[:50]]
        if len(errors) > 50:
            lines.append(f"  ... and {len(errors) - 50} more")
        super().__init__("\n".join(lines) if len(errors) > 1 or summary else
                         errors[0].describe())

    @classmethod
    def raise_if_errors(cls, issues: Iterable[Issue], summary: str | None = None) -> None:
        issues = list(issues)
        if any(i.severity == "error" for i in issues):
            raise cls(issues, summary=summary)


class ImageError(MediADError):
    """An MRI file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LeakageError(MediADError):
    """A subject appears on both sides of a train/test boundary."""
