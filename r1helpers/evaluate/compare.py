"""Before/after comparison, three questions answered apart: fits the data? (teacher-forced NLL of held-out
references), behaves as trained? (what the generated answers do), more often right? (multiple-choice accuracy,
`accuracy.mcq_comparison`). The verdict is "helped" only when accuracy improves by the exact McNemar test.

Writes `compare/comparison.json`; notebook 04 shows it as tables (`views`) and figures (`plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from r1helpers.core.runs import write_json_atomic
from r1helpers.evaluate import accuracy as acc
from r1helpers.evaluate.metrics import MetricSpec, aggregate, perplexity
from r1helpers.evaluate.scoring import (completion_nll, completion_spans, pair_generations,  # noqa: F401
                                        question_rows, teacher_forced)

TEACHER_FORCED = [
    MetricSpec("cot_nll", "reasoning NLL (nats per token of the reference chain of thought; prompt not scored)", "lower", "teacher-forced"),
    MetricSpec("answer_nll", "answer NLL (nats per token of the reference answer + EOS; prompt not scored)", "lower", "teacher-forced"),
    MetricSpec("completion_nll", "completion NLL (nats per token of the completion: reasoning, </think>, answer, EOS; prompt not scored, unlike training's held-out loss)", "lower", "teacher-forced"),
]
GENERATION = [
    MetricSpec("think_opened", "reasoning written in the <think> block", "higher", "generation"),
    MetricSpec("think_closed", "reasoning block closed (</think>)", "higher", "generation"),
    MetricSpec("eos", "EOS reached", "higher", "generation"),
    MetricSpec("cut_at_limit", "cut at max_new_tokens", "lower", "generation"),
    MetricSpec("empty_answer", "empty answer", "lower", "generation"),
    MetricSpec("reasoning_tokens", "reasoning length (tokens)", None, "generation"),
    MetricSpec("answer_tokens", "answer length (tokens)", None, "generation"),
    MetricSpec("repetition", "repeated 4-grams (share of the generated text's word 4-grams)", "lower", "generation"),
    MetricSpec("rouge_l", "ROUGE-L F1 of the answer vs the reference", "higher", "generation"),
]
CORRECTNESS = [
    MetricSpec("accuracy_likelihood", "MCQ accuracy: most probable option (log-likelihood)", "higher", "correctness"),
    MetricSpec("accuracy_generated", "MCQ accuracy: letter stated after </think>", "higher", "correctness"),
]
SPECS = {s.key: s for s in TEACHER_FORCED + GENERATION + CORRECTNESS}
ACCURACY_KEYS = {"accuracy_likelihood": "likelihood", "accuracy_generated": "generated"}
KEYS = {scoring: key for key, scoring in ACCURACY_KEYS.items()}
WAYS = {"likelihood": "by option likelihood", "generated": "by stated letter"}
FINDINGS = {
    "fit": ("Fits the data?", [m.key for m in TEACHER_FORCED]),
    "behaviour": ("Behaves as trained?", [m.key for m in GENERATION]),
    "correctness": ("More often right?", [m.key for m in CORRECTNESS]),
}


def _aggregates(nll: dict[str, list[dict]], rows: list[dict], mcq: dict[str, Any] | None, samples: int,
                seed: int) -> list[dict[str, Any]]:
    out = []
    for spec in TEACHER_FORCED:
        agg = aggregate(spec, [r[spec.key] for r in nll["base"]], [r[spec.key] for r in nll["tuned"]], samples, seed)
        out.append({**agg, "perplexity_before": perplexity(agg["before"]), "perplexity_after": perplexity(agg["after"])})
    for spec in GENERATION:
        out.append(aggregate(spec, [r["base"][spec.key] for r in rows], [r["tuned"][spec.key] for r in rows],
                             samples, seed))
    for spec in CORRECTNESS:
        s = mcq["scorings"].get(ACCURACY_KEYS[spec.key]) if mcq else None
        if s is None:
            out.append({**aggregate(spec, [], [], samples, seed), "verdict": "not measured"})
            continue
        mc = s["mcnemar"]  # the accuracy summary's numbers: one test, one interval
        out.append({"key": spec.key, "label": spec.label, "better": spec.better, "group": spec.group, "n": s["n"],
                    "before": s["before"]["accuracy"], "after": s["after"]["accuracy"], "delta": s["delta"],
                    "ci": s["delta_ci95"], "verdict": _word(s["verdict"]), "p_value": mc["p_value"],
                    "detectable_change": s["detectable_change"],
                    "win_tie_loss": {"wins": mc["c"], "ties": s["n"] - mc["discordant"], "losses": mc["b"]}})
    return out


def _word(verdict: str) -> str:
    return {"no clear change": "no significant change"}.get(verdict, verdict)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def fit_clause(m: dict[str, Any]) -> str:
    """What one fit (or closeness) metric shows, with its delta, interval and n."""
    if m["before"] is None:
        return f"fit not measured ({m['label']}: no data)"
    teacher = m["group"] == "teacher-forced"
    phrase = {
        "better": "Fits the held-out data better" if teacher else "Answers closer to the references",
        "worse": "Fits the held-out data worse" if teacher else "Answers further from the references",
        "no significant change": f"No clear change in {'fit to the held-out data' if teacher else 'closeness to the references'}",
    }.get(m["verdict"], "Too few held-out questions to judge the fit")
    lo, hi = m["ci"] or [float("nan")] * 2
    return (f"{phrase} ({m['label'].split(' (')[0]} {_num(m['before'])} → {_num(m['after'])}, "
            f"delta {m['delta']:+.3g}, 95% CI [{lo:+.3g}, {hi:+.3g}], n={m['n']})")


def behaviour_clause(result: dict[str, Any]) -> str:
    """The generated answers' format: </think> closed, EOS, repetition (with a word where the change is clear)."""
    n = metric(result, "think_closed")["n"]
    if n == 0:
        return "behaviour not measured (no generated held-out answers with references)"
    parts = []
    for key, name in (("think_closed", "</think> closed"), ("eos", "EOS reached"), ("repetition", "repeated 4-grams")):
        m = metric(result, key)
        if m["before"] is not None:
            value = _pct if key != "repetition" else (lambda x: f"{x:.2f}")
            mark = f" ({m['verdict']})" if m["verdict"] in ("better", "worse") else ""
            parts.append(f"{name} {value(m['before'])} → {value(m['after'])}{mark}")
    return f"behaviour on {n} generated held-out answers: " + ", ".join(parts)


def _detectable(s: dict[str, Any]) -> str:
    d = s["detectable_change"]
    return "none at this n" if d is None else f"±{100 * d:.1f} points"


def _scoring_phrase(s: dict[str, Any], scoring: str) -> str:
    """One scoring's numbers: accuracies, gained/lost, the change with its interval, p, detectable change."""
    mc, (lo, hi) = s["mcnemar"], s["delta_ci95"]
    text = (f"{WAYS[scoring]}, accuracy {_pct(s['before']['accuracy'])} → {_pct(s['after']['accuracy'])} of {s['n']} "
            f"questions ({mc['c']} gained, {mc['b']} lost), change {_points(s['delta'])} points, "
            f"95% CI [{_points(lo)}, {_points(hi)}], exact McNemar p={mc['p_value']:.2g}, "
            f"detectable change {_detectable(s)}")
    if scoring == "generated":
        le = s["lenient"]
        text += (f", unparseable {s['before']['unparsed']} → {s['after']['unparsed']}, lenient read (letter "
                 f"anywhere) {_pct(le['before']['accuracy'])} → {_pct(le['after']['accuracy'])}")
        if s["verdict"] == "format change":
            text += ": a format change, not a change in what the model knows"
    return text


def _judged_scorings(result: dict[str, Any]) -> list[str]:
    """The accuracy scorings that decide the verdict: the primary one if it is an accuracy, else both."""
    mcq = result.get("accuracy")
    if not mcq:
        return []
    measured = [k for k, v in mcq["scorings"].items() if v is not None]
    primary = ACCURACY_KEYS.get(result["primary_metric"])
    return [primary] if primary in measured else ([] if primary else measured)


def overall_verdict(result: dict[str, Any]) -> str:
    """"helped" / "hurt" when a judged accuracy scoring changed by the exact McNemar test and none the other way;
    else "no evidence of better answers" (a "format change" included), or "correctness not measured"."""
    judged = _judged_scorings(result)
    if not judged:
        return "correctness not measured"
    verdicts = [metric(result, KEYS[s])["verdict"] for s in judged]
    if "better" in verdicts and "worse" not in verdicts:
        return "helped"
    if "worse" in verdicts and "better" not in verdicts:
        return "hurt"
    return "no evidence of better answers"


def correctness_clause(result: dict[str, Any]) -> str:
    """What the multiple-choice accuracy shows, naming the scorings that decided (the deciding one first)."""
    mcq = result.get("accuracy")
    judged = _judged_scorings(result)
    if not judged:
        if mcq is None:
            reason = (result.get("settings", {}).get("mcq") or {}).get("reason") or "no multiple-choice set given"
            return f"correctness not measured ({reason})"
        return f"correctness not measured ({result['primary_metric']} was not scored)"
    verdicts = {s: metric(result, KEYS[s])["verdict"] for s in judged}
    v = result["verdict"]
    wanted = {"helped": "better", "hurt": "worse"}.get(v)
    order = sorted(judged, key=lambda s: verdicts[s] != wanted)
    text = "; ".join(_scoring_phrase(mcq["scorings"][s], s) for s in order)
    if v in ("helped", "hurt"):
        return f"{'more' if v == 'helped' else 'less'} often right ({text})"
    if "better" in verdicts.values():
        return f"correctness unclear, the scorings disagree ({text})"
    could = ", ".join(_detectable(mcq["scorings"][s]) + ("" if len(judged) == 1 else f" {WAYS[s]}") for s in judged)
    only = ", only a format change" if "format change" in verdicts.values() else ""
    return f"no evidence of better answers{only} (this set could only detect changes of {could}): {text}"


def headline(result: dict[str, Any]) -> str:
    """One sentence with the three answers; "helped"/"hurt" appear only when accuracy says so."""
    fit = fit_clause(metric(result, _fit_key(result)))
    behaviour, right, v = behaviour_clause(result), correctness_clause(result), result["verdict"]
    if v in ("helped", "hurt"):
        return f"Fine-tuning {v}: {right}; {fit[0].lower() + fit[1:]}; {behaviour}."
    if v == "no evidence of better answers":
        return f"{_capital(right)}; {fit[0].lower() + fit[1:]}; {behaviour}."
    return f"{fit}; {behaviour}; {right}."


def findings(result: dict[str, Any]) -> dict[str, Any]:
    """The three questions, each with its answer in words, its metrics' verdicts and n."""
    answers = {"fit": fit_clause(metric(result, _fit_key(result))), "behaviour": behaviour_clause(result),
               "correctness": correctness_clause(result)}
    out = {name: {"question": question, "answer": _capital(answers[name]),
                  "metrics": {k: {"verdict": metric(result, k)["verdict"], "n": metric(result, k)["n"]} for k in keys}}
           for name, (question, keys) in FINDINGS.items()}
    out["fit"]["judged_by"] = _fit_key(result)
    out["correctness"]["judged_by"] = [KEYS[s] for s in _judged_scorings(result)]
    out["correctness"]["verdict"] = result["verdict"]
    return out


def build_comparison(
    nll: dict[str, list[dict]], baseline: list[dict], tuned: list[dict], count_tokens: Callable[[str], int], *,
    primary_metric: str = "completion_nll", bootstrap_samples: int = 1000, seed: int = 3407,
    settings: dict[str, Any] | None = None, notes: list[str] | None = None, log_history: list[dict] | None = None,
    mcq_rows: list[dict[str, Any]] | None = None, mcq_answers: dict[str, list[dict]] | None = None,
    contamination: dict[str, Any] | None = None, more_sets: list[dict[str, Any]] | None = None,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything comparison.json holds and the notebook's tables show; no model needed.

    `nll` is `teacher_forced`'s result, `baseline`/`tuned` the generation records of the same questions.
    `mcq_rows` and `mcq_answers` (`accuracy.answer_mcq_before_after`) give the accuracy, which alone decides
    the verdict; `primary_metric` picks the fit metric the headline quotes, or the one accuracy that decides.
    `contamination`, `more_sets` and `protocol` are reported beside the main set and do not change the verdict.
    """
    if primary_metric not in SPECS or SPECS[primary_metric].better is None:
        raise ValueError(f"primary_metric={primary_metric!r}: choose a metric with a better direction from "
                         f"{[k for k, s in SPECS.items() if s.better]}")
    if (mcq_rows is None) != (mcq_answers is None):
        raise ValueError("give both mcq_rows and mcq_answers, or neither")
    mcq = None if mcq_rows is None else acc.mcq_comparison(mcq_rows, mcq_answers["base"], mcq_answers["tuned"])
    if mcq is not None:
        mcq["contamination"] = contamination
    pairs = pair_generations(baseline, tuned)
    rows = question_rows(pairs, nll, count_tokens)
    examples = [{"id": b["id"], "question": b["question"],
                 **{f"{m}_{k}": r[k] for m, r in (("base", b), ("tuned", t)) for k in ("answer", "reasoning", "think_closed", "finished")}}
                for b, t in pairs if b.get("reference_answer") is None]
    result: dict[str, Any] = {
        "primary_metric": primary_metric,
        "metrics": _aggregates(nll, rows, mcq, bootstrap_samples, seed),
        "accuracy": mcq,
        "more_sets": list(more_sets or []),
        "protocol": protocol,
        "questions": rows,
        "examples": examples,
        "nll": nll,
        "notes": list(notes or []),
        "settings": {**(settings or {}), "held_out_rows_scored": len(nll["base"]),
                     "held_out_questions_generated": len(rows), "mcq_questions": mcq["n"] if mcq else 0,
                     "bootstrap_samples": bootstrap_samples, "bootstrap_seed": seed, "confidence_level": 0.95,
                     "accuracy_test": "exact McNemar, two-sided p < 0.05; detectable change at 80% power"},
        "log_history": [r for r in (log_history or []) if "loss" in r or "eval_loss" in r],
    }
    result["verdict"] = overall_verdict(result)
    result["headline"] = headline(result)
    result["findings"] = findings(result)
    return result


def metric(result: dict[str, Any], key: str) -> dict[str, Any]:
    """One metric's row of a comparison: before, after, delta, ci, verdict, win_tie_loss."""
    return next(m for m in result["metrics"] if m["key"] == key)


def _fit_key(result: dict[str, Any]) -> str:
    return result["primary_metric"] if result["primary_metric"] not in ACCURACY_KEYS else "completion_nll"


def _accuracy_numbers(name: str, s: dict[str, Any]) -> dict[str, Any]:
    """One `accuracy_summary`'s numbers under keys starting with `name`."""
    return {f"{name} before": s["before"]["accuracy"], f"{name} after": s["after"]["accuracy"], f"{name} n": s["n"],
            f"{name} change 95% CI": "[{:+.3f}, {:+.3f}]".format(*s["delta_ci95"]),
            f"{name} McNemar p": s["mcnemar"]["p_value"], f"{name} detectable change": s["detectable_change"],
            f"{name} unparseable before / after": f"{s['before']['unparsed']} / {s['after']['unparsed']}",
            f"{name} verdict": s["verdict"]}


def key_numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader keeps from a comparison (the notebook's last table, results/04.json)."""
    fit = metric(result, _fit_key(result))
    lo, hi = fit["ci"] or [None, None]
    out: dict[str, Any] = {
        "verdict": result["verdict"], "headline": result["headline"],
        "fit: metric": f"{fit['label']} ({fit['key']}, {fit['better']} is better)",
        "fit: before": fit["before"], "fit: after": fit["after"], "fit: delta": fit["delta"],
        "fit: 95% CI low": lo, "fit: 95% CI high": hi, "fit: verdict": fit["verdict"], "fit: n": fit["n"],
    }
    for key, name in (("think_closed", "closed </think> rate"), ("eos", "EOS rate"), ("repetition", "repeated 4-gram share")):
        m = metric(result, key)
        out.update({f"behaviour: {name} before": m["before"], f"behaviour: {name} after": m["after"],
                    f"behaviour: {name} verdict": m["verdict"]})
    out["behaviour: n (held-out questions generated)"] = result["settings"].get("held_out_questions_generated")
    mcq = result.get("accuracy") or {}
    for scoring, s in (mcq.get("scorings") or {"likelihood": None, "generated": None}).items():
        name = f"correctness: accuracy by {'likelihood' if scoring == 'likelihood' else 'stated letter'}"
        out.update({name: "not measured"} if s is None else _accuracy_numbers(name, s))
        if s is not None and scoring == "generated":
            out.update(_accuracy_numbers("correctness: lenient read of the stated letter", s["lenient"]))
    if mcq.get("contamination"):
        out["correctness: questions left out as contaminated"] = "{excluded} of {checked}".format(**mcq["contamination"])
    for m in result.get("more_sets") or []:
        name = f"more sets: {m['name']} by likelihood"
        out.update({name: m["note"]} if m["likelihood"] is None else _accuracy_numbers(name, m["likelihood"]))
    p = result.get("protocol") or {"n": 0}
    for read in ("lenient", "strict") if p["n"] else ():
        out.update(_accuracy_numbers(f"authors' protocol: {read} accuracy", p["scorings"][read]))
    if p["n"]:
        out["authors' protocol: lenient guesses (most similar option) before / after"] = "{} / {}".format(
            *(p["scorings"]["lenient"][side]["matched_by"]["most_similar"] for side in ("before", "after")))
        for pub in p["published"]:
            out[f"published: {pub['model']} on {pub['set']}"] = f"{'about ' if pub['approximate'] else ''}{pub['accuracy']}% ({pub['note']})"
    out["held-out rows scored (NLL)"] = result["settings"].get("held_out_rows_scored")
    return out


def write_outputs(result: dict[str, Any], out: Path) -> Path:
    """Write `out`/comparison.json (atomically: a failed write leaves the previous one whole)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "comparison.json", result)
    return out / "comparison.json"
