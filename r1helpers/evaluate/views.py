"""The comparison as notebook tables: summary, findings, accuracy, further sets, protocol, side by side, plots."""

from __future__ import annotations

from typing import Any

from r1helpers.core.show import cut
from r1helpers.evaluate import accuracy as acc
from r1helpers.evaluate.compare import FINDINGS

def summary_table(result: dict[str, Any], question: str | None = None):
    """Before, after, delta, 95% interval, verdict, win/tie/loss and n per metric.

    `question` ("fit", "behaviour" or "correctness") keeps that question's metrics only.
    """
    import pandas as pd

    keys = None if question is None else set(FINDINGS[question][1])
    where = {k: name for name, (_, ks) in FINDINGS.items() for k in ks}
    rows = []
    for m in result["metrics"]:
        if keys is not None and m["key"] not in keys:
            continue
        wtl = m["win_tie_loss"]
        rows.append({
            "metric": m["label"], "n": m["n"], "before": m["before"], "after": m["after"], "delta": m["delta"],
            "95% CI": "" if not m["ci"] else f"[{m['ci'][0]:+.4g}, {m['ci'][1]:+.4g}]",
            "better": m["better"] or "-", "verdict": m["verdict"],
            "win/tie/loss": "" if not wtl else f"{wtl['wins']}/{wtl['ties']}/{wtl['losses']}",
            "question": where.get(m["key"], ""),
        })
    return pd.DataFrame(rows).set_index("metric")


def more_sets_table(result: dict[str, Any]):
    """`report.more_sets_rows` as a table: each further set's likelihood accuracy, with published figures."""
    import pandas as pd

    from r1helpers.evaluate.report import more_sets_rows

    rows = more_sets_rows(result)
    return pd.DataFrame(rows).set_index("set") if rows else pd.DataFrame({"further sets": ["none scored"]})


def protocol_table(result: dict[str, Any]):
    """`report.protocol_rows` as a table: the authors' protocol read both ways."""
    import pandas as pd

    from r1helpers.evaluate.report import protocol_rows

    rows = protocol_rows(result)
    return pd.DataFrame(rows).set_index("read") if rows else pd.DataFrame({"authors' protocol": ["not run"]})


def findings_table(result: dict[str, Any]):
    """The three questions and their answers in words."""
    import pandas as pd

    return pd.DataFrame([{"question": f["question"], "answer": f["answer"]}
                         for f in result["findings"].values()]).set_index("question")


def accuracy_table(result: dict[str, Any]):
    """`accuracy_rows` as a table (one row "not measured" when there is no multiple-choice set)."""
    import pandas as pd

    rows = acc.summary_rows(result.get("accuracy"))
    if not rows:
        return pd.DataFrame([{"scoring": "-", "verdict": result["findings"]["correctness"]["answer"]}]).set_index("scoring")
    return pd.DataFrame(rows).set_index("scoring")


def mcq_side_by_side(result: dict[str, Any], width: int = 300):
    """Per multiple-choice question: the gold letter and each model's picks (likelihood, stated letter)."""
    import pandas as pd

    mcq = result.get("accuracy") or {"items": []}
    rows = []
    for it in mcq["items"]:
        row = {"id": it["id"], "question": cut(it["question"], width), "gold": it["gold"]}
        for side, name in (("base", "base"), ("tuned", "fine-tuned")):
            e = it[side]
            row[f"{name} likelihood"] = e["likelihood_letter"]
            if "generated_letter" in e:
                row[f"{name} stated"] = e["generated_letter"] or "(unparseable)"
        rows.append(row)
    return pd.DataFrame(rows).set_index("id") if rows else pd.DataFrame()


def side_by_side(result: dict[str, Any], width: int = 600):
    """Question, reference, base answer and fine-tuned answer, with each answer's scores."""
    import pandas as pd

    rows = [{"id": q["id"], "question": cut(q["question"], width), "reference": cut(q["reference_answer"], width),
             "base answer": cut(q["base"]["answer"], width), "fine-tuned answer": cut(q["tuned"]["answer"], width),
             "ROUGE-L base": q["base"]["rouge_l"], "ROUGE-L tuned": q["tuned"]["rouge_l"],
             "NLL base": q["base"]["completion_nll"], "NLL tuned": q["tuned"]["completion_nll"]}
            for q in result["questions"]]
    rows += [{"id": e["id"], "question": cut(e["question"], width), "reference": "(none)",
              "base answer": cut(e["base_answer"], width), "fine-tuned answer": cut(e["tuned_answer"], width)}
             for e in result["examples"]]
    pd.set_option("display.max_colwidth", width + 10)
    return pd.DataFrame(rows).set_index("id")


def figures(result: dict[str, Any]):
    """The report's plots, for display in the notebook."""
    from r1helpers.evaluate.plots import figures as make

    return make(result)
