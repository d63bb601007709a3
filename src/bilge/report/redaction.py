"""Values stay out of reports unless the user asks: memory holds secrets.

The agent captures renderings of held values only under
``bilge run --show-values``; even then a report shows them only under
``bilge report --show-values``, so a store recorded with values can still
be turned into a redacted report for a ticket.
"""

from __future__ import annotations

from dataclasses import replace

from bilge.model import Diagnosis, Finding


def has_values(d: Diagnosis) -> bool:
    """Whether any finding carries captured values."""
    return any(f.values for f in _all_findings(d))


def hide_values(d: Diagnosis) -> Diagnosis:
    """The same diagnosis with every captured value removed."""
    return replace(d, findings=_hidden(d.findings),
                   processes=tuple(replace(p, findings=_hidden(p.findings)) for p in d.processes))


def _hidden(findings: tuple[Finding, ...]) -> tuple[Finding, ...]:
    return tuple(replace(f, values=()) if f.values else f for f in findings)


def _all_findings(d: Diagnosis) -> list[Finding]:
    return list(d.findings) + [f for p in d.processes for f in p.findings]
