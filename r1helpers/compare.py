"""Before/after comparison of the base and fine-tuned generations on the same questions.

    python -m r1helpers.pipeline --stages 04
"""

from __future__ import annotations

import statistics
from typing import Any

from .config import Config
from .runs import Run, write_json_atomic


def generation_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    n = max(len(records), 1)
    return {
        "questions": len(records),
        "think_closed_rate": sum(r["think_closed"] for r in records) / n,
        "eos_rate": sum(r["finished"] for r in records) / n,
        "mean_new_tokens": statistics.fmean(r["new_tokens"] for r in records) if records else 0.0,
        "empty_answer_rate": sum(not r["answer"].strip() for r in records) / n,
    }


def compare(cfg: Config, run: Run, prepared, baseline: list[dict], tuned: list[dict]) -> dict[str, Any]:
    """Aggregate both sets of generations and save compare/comparison.json."""
    before, after = generation_metrics(baseline), generation_metrics(tuned)
    result = {
        "before": before,
        "after": after,
        "delta": {k: after[k] - before[k] for k in before if k != "questions"},
    }
    write_json_atomic(run.stage_dir("compare") / "comparison.json", result)
    run.write_manifest(cfg, "compare")
    return result


def summary_table(result: dict[str, Any]):
    import pandas as pd

    keys = [k for k in result["before"] if k != "questions"]
    return pd.DataFrame(
        {"before": [result["before"][k] for k in keys], "after": [result["after"][k] for k in keys],
         "delta": [result["delta"][k] for k in keys]}, index=keys,
    )
