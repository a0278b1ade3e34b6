"""The box each chapter opens with in the built book: what the paper found, what this
tier's models show, and why the two differ when they do, in three lines computed from the
numbers the chapter recorded (``results/<tier>/<notebook>.json``, written by
:class:`vitreg_lib.record.Recorder`), never typed.

``tools/build_book.py`` inserts it under each chapter's title when it stages the executed
notebooks. The verdicts are the scorecard's (:func:`vitreg_lib.paper.verdict`, summed up
per finding by :func:`vitreg_lib.paper.finding_verdict`); the findings a chapter records
are :data:`scorecard.FINDING_OF`'s.
"""

from __future__ import annotations

import scorecard  # tools/scorecard.py

from vitreg_lib.paper import (
    FINDINGS,
    NOT_COMPARABLE,
    PAPER,
    REPRODUCED,
    finding_verdict,
    format_number,
    is_arithmetic,
    verdict,
)

#: at most this many numbers per line, so that the box stays three short lines
SHOWN = 3
TITLE = "This chapter at a glance"


def _number(x) -> str:
    if x is None:
        return "none"
    if isinstance(x, (int, float)):
        return format_number(x)
    return str(x)


def _judged(stem: str, entries: dict[str, dict]) -> dict[str, list[tuple[str, dict, str, str]]]:
    """``{finding: [(quantity, entry, verdict, criterion)]}`` for the entries with a paper value."""
    out: dict[str, list] = {}
    for name, e in entries.items():
        if e.get("paper") is None:
            continue
        v, criterion = verdict(e["paper"], e["value"], e.get("comparable", ""),
                               arithmetic=is_arithmetic(scorecard.quantity(name, e.get("model"))))
        out.setdefault(scorecard.finding_of(stem, name), []).append(
            (scorecard.quantity(name, e.get("model")), e, v, criterion))
    return out


def _paper_line(finding: str, judged: list) -> str:
    model = PAPER.get(finding, {}).get("model")
    claims = list(dict.fromkeys(f"`{q}` {_number(e['paper'])}" for q, e, _, _ in judged))
    return (f"**The paper** ({finding}{', ' + model if model else ''}): {FINDINGS[finding]}; "
            + ", ".join(claims[:SHOWN]) + (" …" if len(claims) > SHOWN else "") + ".")


def _here_line(tier: str, judged: list) -> str:
    summary = finding_verdict([(v, c) for _, _, v, c in judged])
    shown = [f"`{q}` {_number(e['value'])}" + (f" on {e['model']}" if e.get("model") else "")
             for q, e, _, _ in judged]
    return (f"**Here** ({tier} tier): {summary} — " + "; ".join(shown[:SHOWN])
            + (f"; {len(shown) - SHOWN} more in the table at the end" if len(shown) > SHOWN else "") + ".")


def _why_line(judged: list) -> str:
    apart = [(e, v, c) for _, e, v, c in judged if v != REPRODUCED]
    if not apart:
        return "**Why they differ**: they do not, on the numbers judged (the criteria are the scorecard's)."
    reasons = []
    for e, v, criterion in apart:
        comparable = (e.get("comparable") or "").strip()
        if v == NOT_COMPARABLE and comparable:
            reasons.append(comparable)
        elif comparable:
            reasons.append(f"{comparable} ({criterion})")
        else:
            reasons.append(f"same quantity, and the number misses the paper's ({criterion})")
    reasons = list(dict.fromkeys(reasons))
    return ("**Why they differ**: " + "; ".join(reasons[:2])
            + (f"; and {len(reasons) - 2} more reasons in the table at the end" if len(reasons) > 2 else "")
            + ".")


def box(stem: str, entries: dict[str, dict], tier: str) -> str | None:
    """The opening box of notebook ``stem`` (MyST markdown) from its recorded ``entries``
    in ``tier``; ``None`` when it recorded no number with a paper value."""
    judged = _judged(stem, entries)
    if not judged:
        return None
    lines = []
    for finding, rows in judged.items():
        lines += [_paper_line(finding, rows), _here_line(tier, rows), _why_line(rows)]
    body = "\n\n".join(lines)
    return f":::{{admonition}} {TITLE}\n:class: tip\n\n{body}\n:::\n"
