"""The comparison as notebook tables: findings, metrics, accuracy, the authors' protocol, further sets, side by side."""

from __future__ import annotations

from typing import Any

from r1helpers.core.show import cut
from r1helpers.evaluate.compare import FINDINGS


def _table(rows: list[dict[str, Any]], index: str, empty: dict[str, list]):
    import pandas as pd

    return pd.DataFrame(rows).set_index(index) if rows else pd.DataFrame(empty)


def _share(s: dict[str, Any], side: str) -> str:
    return f"{s[side]['correct']}/{s['n']} = {s[side]['accuracy']:.1%} [{s[side]['ci95'][0]:.1%}, {s[side]['ci95'][1]:.1%}]"


def _points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _detectable(s: dict[str, Any]) -> str:
    return "none at this n" if s["detectable_change"] is None else f"±{100 * s['detectable_change']:.1f}"


def _published(published: list[dict[str, Any]]) -> str:
    return "; ".join(f"{p['model']}: {'about ' if p['approximate'] else ''}{p['accuracy']}% ({p['note']})"
                     for p in published) or "-"


def summary_table(result: dict[str, Any], question: str | None = None):
    """Before, after, delta, 95% interval, verdict, win/tie/loss and n per metric; `question` keeps one question's."""
    where = {k: name for name, (_, keys) in FINDINGS.items() for k in keys}
    rows = [{"metric": m["label"], "n": m["n"], "before": m["before"], "after": m["after"], "delta": m["delta"],
             "95% CI": "" if not m["ci"] else f"[{m['ci'][0]:+.4g}, {m['ci'][1]:+.4g}]",
             "better": m["better"] or "-", "verdict": m["verdict"],
             "win/tie/loss": "" if not m["win_tie_loss"] else "{wins}/{ties}/{losses}".format(**m["win_tie_loss"]),
             "question": where.get(m["key"], "")}
            for m in result["metrics"] if question is None or where.get(m["key"]) == question]
    return _table(rows, "metric", {})


def findings_table(result: dict[str, Any]):
    """The three questions and their answers in words."""
    return _table([{"question": f["question"], "answer": f["answer"]} for f in result["findings"].values()],
                  "question", {})


def accuracy_rows(mcq: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per scoring of `mcq_comparison`'s result (the stated letter's lenient read its own row): accuracy
    with 95% Wilson intervals, the change and its exact interval, McNemar's p, the detectable change, the verdict."""
    rows = []
    for scoring, s in ((mcq or {}).get("scorings") or {}).items():
        reads = [] if s is None else [(scoring, s)] + ([("generated, lenient read", s["lenient"])] if "lenient" in s else [])
        for name, r in reads:
            b, a, mc = r["before"], r["after"], r["mcnemar"]
            rows.append({
                "scoring": name, "n": r["n"],
                "before": f"{b['correct']}/{r['n']} = {b['accuracy']:.1%}",
                "before 95% Wilson": "[{:.1%}, {:.1%}]".format(*b["ci95"]),
                "after": f"{a['correct']}/{r['n']} = {a['accuracy']:.1%}",
                "after 95% Wilson": "[{:.1%}, {:.1%}]".format(*a["ci95"]),
                "change (points)": _points(r["delta"]),
                "change 95% CI (exact, paired)": "[{}, {}]".format(*map(_points, r["delta_ci95"])),
                "exact McNemar p": round(mc["p_value"], 4), "lost / gained": f"{mc['b']} / {mc['c']}",
                "detectable change (points, 80% power)": _detectable(r),
                "unparseable before / after": f"{b['unparsed']} / {a['unparsed']}" if name == "generated" else "-",
                "verdict": {"no clear change": "no significant change"}.get(r["verdict"], r["verdict"]),
            })
    return rows


def accuracy_table(result: dict[str, Any]):
    """`accuracy_rows` as a table (one row "not measured" without a multiple-choice set)."""
    return _table(accuracy_rows(result.get("accuracy")), "scoring",
                  {"scoring": ["-"], "verdict": [result["findings"]["correctness"]["answer"]]})


def protocol_table(result: dict[str, Any]):
    """The authors' protocol, one row per read (their lenient matcher, the strict parser), published figures beside."""
    p = result.get("protocol") or {"n": 0}
    rows = []
    for read in ("lenient", "strict") if p["n"] else ():
        s = p["scorings"][read]
        rows.append({"read": s["label"], "n": s["n"], "base model (before)": _share(s, "before"),
                     "fine-tuned (after)": _share(s, "after"),
                     "unparseable before / after": f"{s['before']['unparsed']} / {s['after']['unparsed']}",
                     "change (points)": _points(s["delta"]), "exact McNemar p": round(s["mcnemar"]["p_value"], 4),
                     "detectable change (points)": _detectable(s), "verdict": s["verdict"],
                     "matched by (before)": ", ".join(f"{k} {v}" for k, v in s["before"].get("matched_by", {}).items() if v),
                     "prompt in": ", ".join(p["wrapped_in"]), "published": _published(p["published"])})
    return _table(rows, "read", {"authors' protocol": ["not run"]})


def more_sets_table(result: dict[str, Any]):
    """Each further set's likelihood accuracy, test, detectable change, contamination, T4 minutes, published figures."""
    rows = []
    for m in result.get("more_sets") or []:
        s, c = m["likelihood"], m.get("contamination")
        rows.append({"set": m["name"], "n": m["n"],
                     "before (likelihood)": "-" if s is None else _share(s, "before"),
                     "after (likelihood)": "-" if s is None else _share(s, "after"),
                     "change (points)": "-" if s is None else _points(s["delta"]),
                     "exact McNemar p": "-" if s is None else round(s["mcnemar"]["p_value"], 4),
                     "detectable change (points)": "-" if s is None else _detectable(s),
                     "verdict": m["note"] if s is None else s["verdict"],
                     "left out (contaminated)": "-" if not c else f"{c['excluded']} of {c['checked']}",
                     "T4 minutes (estimated)": m.get("t4_minutes_estimated") or "-",
                     "published (generation, authors' protocols)": _published(m.get("published") or [])})
    return _table(rows, "set", {"further sets": ["none scored"]})


def mcq_side_by_side(result: dict[str, Any], width: int = 300):
    """Per multiple-choice question: the gold letter and each model's picks (likelihood, stated letter)."""
    rows = []
    for it in (result.get("accuracy") or {}).get("items", []):
        row = {"id": it["id"], "question": cut(it["question"], width), "gold": it["gold"]}
        for side, name in (("base", "base"), ("tuned", "fine-tuned")):
            row[f"{name} likelihood"] = it[side]["likelihood_letter"]
            if "generated_letter" in it[side]:
                row[f"{name} stated"] = it[side]["generated_letter"] or "(unparseable)"
        rows.append(row)
    return _table(rows, "id", {})


def side_by_side(result: dict[str, Any], width: int = 600):
    """Question, reference, base answer and fine-tuned answer, with each answer's ROUGE-L and NLL."""
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
    """The comparison's figures, for display in the notebook."""
    from r1helpers.evaluate.plots import figures as make

    return make(result)
