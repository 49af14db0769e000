"""A list of named checks and their outcomes, printed the same way by every verifier
(`paystream check`, `paystream ledger verify`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rich.table import Table


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    checks: list[Check] = field(default_factory=list)
    title: ClassVar[str] = "Checks"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def table(self) -> Table:
        table = Table(title=self.title)
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for check in self.checks:
            table.add_row(check.name, "[green]ok[/green]" if check.ok else "[red]FAILED[/red]", check.detail)
        return table

    def __str__(self) -> str:
        return "\n".join(f"{'ok ' if c.ok else 'BAD'} {c.name}: {c.detail}" for c in self.checks)
