"""Further multiple-choice sets: their names, the figures published for them (cited) and their likelihood accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from r1helpers.evaluate.accuracy import mcq_comparison
from r1helpers.evaluate.questions import KNOWN_SETS

_MEDREASON = "MedReason repository (UCSC-VLAA/MedReason), comparison table"
# Figures published for these sets, cited as reported (accuracy in %), never reproduced here.
PUBLISHED = [
    {"model": "DeepSeek-R1-Distill-Llama-8B", "set": "MedQA", "accuracy": 55.0, "approximate": True, "source": _MEDREASON},
    {"model": "DeepSeek-R1-Distill-Llama-8B", "set": "MedMCQA", "accuracy": 49.0, "approximate": True, "source": _MEDREASON},
    {"model": "DeepSeek-R1-Distill-Llama-8B", "set": "PubMedQA", "accuracy": 74.0, "approximate": True, "source": _MEDREASON},
    {"model": "HuatuoGPT-o1-8B", "set": "MedQA", "accuracy": 72.6, "approximate": False,
     "source": "HuatuoGPT-o1 paper (Chen et al., 2024), Table 1"},
]
PUBLISHED_SETS = {"GBaker/MedQA-USMLE-4-options": "MedQA", "openlifescienceai/medmcqa": "MedMCQA",
                  "qiaojin/PubMedQA": "PubMedQA"}


def hub_id(source: str | None) -> str:
    """The Hub id of a source written "id[:config][@split]"."""
    return str(source or "").partition("@")[0].partition(":")[0]


def published_figures(source: str | None) -> list[dict[str, Any]]:
    """The `PUBLISHED` figures for the set `source` is (none for a local file), each with the words to print beside it."""
    key = PUBLISHED_SETS.get(hub_id(source))
    return [{**p, "note": f"as reported by {p['source']}, not reproduced here"} for p in PUBLISHED if p["set"] == key]


def more_set_result(source: str, rows: Sequence[dict[str, Any]] | None, answers: dict[str, list] | None,
                    contamination: dict[str, Any] | None = None, note: str | None = None) -> dict[str, Any]:
    """One further set's likelihood accuracy before and after (None when it did not load), its contamination
    check, the estimated T4 minutes, the published figures for it and per question the gold and both picks."""
    from r1helpers.evaluate.budget import likelihood_minutes

    name = KNOWN_SETS.get(hub_id(source), {}).get("name") or str(source)
    out: dict[str, Any] = {"source": source, "name": name, "n": 0, "likelihood": None,
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
