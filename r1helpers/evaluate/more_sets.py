"""Further multiple-choice sets: their names, the figures published for them (cited) and their likelihood accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from r1helpers.evaluate.accuracy import mcq_comparison

# Figures published for these sets, cited as reported (accuracy in %), never reproduced here.
PUBLISHED = [
    {"model": "DeepSeek-R1-Distill-Llama-8B", "set": "MedQA", "accuracy": 55.0, "approximate": True,
     "source": "MedReason repository (UCSC-VLAA/MedReason), comparison table"},
    {"model": "DeepSeek-R1-Distill-Llama-8B", "set": "MedMCQA", "accuracy": 49.0, "approximate": True,
     "source": "MedReason repository (UCSC-VLAA/MedReason), comparison table"},
    {"model": "DeepSeek-R1-Distill-Llama-8B", "set": "PubMedQA", "accuracy": 74.0, "approximate": True,
     "source": "MedReason repository (UCSC-VLAA/MedReason), comparison table"},
    {"model": "HuatuoGPT-o1-8B", "set": "MedQA", "accuracy": 72.6, "approximate": False,
     "source": "HuatuoGPT-o1 paper (Chen et al., 2024), Table 1"},
]


# Which published set a source is (the Hub id before any ":config" or "@split").
PUBLISHED_SETS = {"GBaker/MedQA-USMLE-4-options": "MedQA", "openlifescienceai/medmcqa": "MedMCQA",
                  "qiaojin/PubMedQA": "PubMedQA"}


def published_figures(source: str | None) -> list[dict[str, Any]]:
    """The figures of `PUBLISHED` for the set `source` is (none for a local file or another set), each with
    the words to print beside it: "as reported by <source>, not reproduced here"."""
    key = PUBLISHED_SETS.get(str(source or "").partition("@")[0].partition(":")[0])
    return [{**p, "note": f"as reported by {p['source']}, not reproduced here"} for p in PUBLISHED if p["set"] == key]


def set_name(source: str | None) -> str:
    """A set's display name: KNOWN_SETS's for a known Hub id, else the source as given."""
    from r1helpers.evaluate.questions import KNOWN_SETS

    return KNOWN_SETS.get(str(source).partition("@")[0].partition(":")[0], {}).get("name") or str(source)


def more_set_result(source: str, rows: Sequence[dict[str, Any]] | None, answers: dict[str, list] | None,
                    contamination: dict[str, Any] | None = None, note: str | None = None) -> dict[str, Any]:
    """One further set's likelihood accuracy before and after (`accuracy_summary`, under "likelihood"; None
    when the set did not load or has no questions), its contamination check, the estimated T4 minutes of its
    scoring, the published figures for it (cited, not reproduced) and per question the gold and both picks."""
    from r1helpers.evaluate.budget import likelihood_minutes

    out: dict[str, Any] = {"source": source, "name": set_name(source), "n": 0, "likelihood": None,
                           "contamination": contamination, "note": note, "published": published_figures(source),
                           "t4_minutes_estimated": None, "items": []}
    if not rows:
        return out
    cmp = mcq_comparison(rows, answers["base"], answers["tuned"])
    t4 = likelihood_minutes(source, cmp["n"])
    out.update(n=cmp["n"], likelihood=cmp["scorings"]["likelihood"],
               t4_minutes_estimated=None if t4 is None else round(t4, 1),
               items=[{"id": it["id"], "gold": it["gold"], "base": it["base"]["likelihood_letter"],
                       "tuned": it["tuned"]["likelihood_letter"]} for it in cmp["items"]])
    return out
