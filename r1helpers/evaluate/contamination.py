"""Evaluation questions that share a 64-character span with a training question (HuatuoGPT-o1's authors' check),
found before anything is scored, counted and left out.

Training texts are cut into aligned chunks of `span // 2` characters: any shared span of `span` characters holds
a whole chunk, so each position of a question is looked up once and only chunk hits are extended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

SPAN = 64


def normalise(text: str | None) -> str:
    """Lower case, white space collapsed to single spaces: layout differences never hide a copy."""
    return " ".join(str(text or "").lower().split())


class SpanIndex:
    """Where each aligned chunk of the training texts occurs, for `shared_span`."""

    def __init__(self, texts: Iterable[str], span: int = SPAN):
        if span < 2:
            raise ValueError(f"span must be >= 2 characters, got {span}")
        self.span, self.chunk = span, span // 2
        self.texts = [normalise(t) for t in texts]
        self.where: dict[str, list[tuple[int, int]]] = {}
        for row, text in enumerate(self.texts):
            for start in range(0, len(text) - self.chunk + 1, self.chunk):
                self.where.setdefault(text[start : start + self.chunk], []).append((row, start))

    def shared_span(self, text: str) -> tuple[int, int] | None:
        """(training row, shared length) of the first training text sharing `span` characters with `text`, or None."""
        q = normalise(text)
        k = self.chunk
        for i in range(0, len(q) - k + 1):
            for row, start in self.where.get(q[i : i + k], ()):
                t = self.texts[row]
                left = 0
                while i - left > 0 and start - left > 0 and q[i - left - 1] == t[start - left - 1]:
                    left += 1
                right = k
                while i + right < len(q) and start + right < len(t) and q[i + right] == t[start + right]:
                    right += 1
                if left + right >= self.span:
                    return row, left + right
        return None


def contaminated(questions: Sequence[dict[str, Any]], training_questions: Iterable[str],
                 span: int = SPAN) -> list[dict[str, Any]]:
    """[{"id", "train_row", "shared_chars"}] of the rows whose question shares `span` characters with a training one."""
    index = SpanIndex(training_questions, span)
    out = []
    for r in questions:
        hit = index.shared_span(r["question"])
        if hit is not None:
            out.append({"id": r["id"], "train_row": hit[0], "shared_chars": hit[1]})
    return out


def drop_contaminated(questions: Sequence[dict[str, Any]], training_questions: Sequence[str],
                      span: int = SPAN, against: str = "training rows") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows left after dropping contaminated ones, and what was checked and dropped:
    {"span", "against", "training_questions", "checked", "excluded", "items": [...]}."""
    training_questions = list(training_questions)
    hits = contaminated(questions, training_questions, span)
    gone = {h["id"] for h in hits}
    kept = [r for r in questions if r["id"] not in gone]
    return kept, {"span": span, "against": against, "training_questions": len(training_questions),
                  "checked": len(questions), "excluded": len(hits), "kept": len(kept), "items": hits,
                  "method": f"a shared span of {span} characters after lower-casing and collapsing white space "
                            "(as HuatuoGPT-o1's authors checked)"}
