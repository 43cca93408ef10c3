"""A policy decision: allowed or not, and why — every rule that was checked, in words.

Fail closed: a decision that checked no rule refuses. An evaluator that forgot to add its rules, or a
policy whose rule list came out empty, must never read as "everything allowed" (``all([])`` is True).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    why: str


@dataclass
class Decision:
    stage: str
    rules: list[RuleResult] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return bool(self.rules) and all(r.passed for r in self.rules)

    @property
    def reasons(self) -> list[str]:
        """Why it was refused (the failing rules); if allowed, why each rule passed."""
        if not self.rules:
            return [f"{self.stage}: no policy rule was evaluated, so nothing is allowed (fail closed)"]
        failing = [f"{r.rule}: {r.why}" for r in self.rules if not r.passed]
        return failing or [f"{r.rule}: {r.why}" for r in self.rules]

    def check(self, rule: str, passed: bool, why_pass: str, why_fail: str) -> None:
        self.rules.append(RuleResult(rule, passed, why_pass if passed else why_fail))

    def as_details(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "allowed": self.allowed,
            "reasons": self.reasons,
            "rules": [{"rule": r.rule, "passed": r.passed, "why": r.why} for r in self.rules],
        }
