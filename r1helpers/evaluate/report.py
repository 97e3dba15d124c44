"""The comparison as one self-contained HTML page, with the plots of `plots` embedded.

The page opens from disk in any browser with no server and no network: styles
are inline, plots are embedded as base64 PNG, and every piece of text from the
data or the models is escaped, so a generated `<script>` is shown, never run.
"""

from __future__ import annotations

import html
import math
from typing import Any

from r1helpers.evaluate import plots


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def esc(value: Any) -> str:
    return html.escape(fmt(value) if not isinstance(value, str) else value, quote=True)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.headline{padding:12px 16px;border-radius:6px;font-size:1.05em;margin:12px 0}
.helped{background:#e6f4e6;border-left:6px solid #2ca02c}.hurt{background:#fbe9e9;border-left:6px solid #d62728}
.neutral{background:#f1f1f1;border-left:6px solid #7f7f7f}
.better{color:#1e7b1e;font-weight:600}.worse{color:#b22222;font-weight:600}
.text{white-space:pre-wrap;max-height:18em;overflow:auto;min-width:18em;max-width:34em}
.scores{font-size:0.8em;color:#555;margin-top:4px}details summary{cursor:pointer;color:#555;font-size:0.85em}
img{max-width:100%;border:1px solid #eee;margin:6px 0}.answer{margin:6px 0 10px 0}
"""


def _kv_table(items: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v if not isinstance(v, dict) else _inline(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table>{rows}</table>"


def _inline(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in d.items())


def _metrics_table(result: dict[str, Any], keys: list[str] | None = None) -> str:
    head = ("<tr><th>metric</th><th>group</th><th>n</th><th>better</th><th>before</th><th>after</th><th>delta</th>"
            "<th>95% CI of delta</th><th>verdict</th><th>win / tie / loss</th></tr>")
    rows = []
    for m in result["metrics"]:
        if keys is not None and m["key"] not in keys:
            continue
        ci = "–" if not m["ci"] else f"[{m['ci'][0]:+.4g}, {m['ci'][1]:+.4g}]"
        wtl = "–" if not m["win_tie_loss"] else "{wins} / {ties} / {losses}".format(**m["win_tie_loss"])
        extra = ""
        if m.get("perplexity_before") is not None:
            extra = f"<br><span class='scores'>perplexity {fmt(m['perplexity_before'])} → {fmt(m['perplexity_after'])}</span>"
        rows.append(
            f"<tr><td>{esc(m['label'])}{extra}</td><td>{esc(m['group'])}</td><td class='num'>{m['n']}</td>"
            f"<td>{esc(m['better'] or '–')}</td><td class='num'>{esc(m['before'])}</td>"
            f"<td class='num'>{esc(m['after'])}</td><td class='num'>{esc(m['delta'])}</td>"
            f"<td class='num'>{esc(ci)}</td><td class='{esc(m['verdict'])}'>{esc(m['verdict'])}</td>"
            f"<td class='num'>{esc(wtl)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _answer_text(answer: str, closed: bool, finished: bool) -> str:
    if answer:
        return answer if finished else answer + " [cut at max_new_tokens]"
    if not closed:
        return "(no answer: the reasoning never closed" + ("" if finished else " before max_new_tokens") + ")"
    return "(empty answer)"


def _answer_cell(side: dict[str, Any]) -> str:
    scores = (f"ROUGE-L {fmt(side['rouge_l'])} · similarity {fmt(side['semantic_similarity'])} · "
              f"NLL {fmt(side['completion_nll'])} · </think> {fmt(side['think_closed'])} · EOS {fmt(side['eos'])} · "
              f"reasoning {side['reasoning_tokens']}, answer {side['answer_tokens']} tokens")
    answer = _answer_text(side["answer"], side["think_closed"], side["eos"])
    return (f"<td><div class='text'>{esc(answer)}</div><div class='scores'>{esc(scores)}</div>"
            f"<details><summary>reasoning</summary><div class='text'>{esc(side['reasoning'])}</div></details></td>")


def _example_cell(example: dict[str, Any], model: str) -> str:
    answer = _answer_text(example[f"{model}_answer"], example[f"{model}_think_closed"], example[f"{model}_finished"])
    return (f"<td><div class='text'>{esc(answer)}</div><details><summary>reasoning</summary>"
            f"<div class='text'>{esc(example[f'{model}_reasoning'])}</div></details></td>")


def _side_by_side(result: dict[str, Any]) -> str:
    head = "<tr><th>id</th><th>question</th><th>reference answer</th><th>base answer</th><th>fine-tuned answer</th></tr>"
    rows = [f"<tr><td>{esc(q['id'])}</td><td><div class='text'>{esc(q['question'])}</div></td>"
            f"<td><div class='text'>{esc(q['reference_answer'])}</div></td>{_answer_cell(q['base'])}{_answer_cell(q['tuned'])}</tr>"
            for q in result["questions"]]
    rows += [f"<tr><td>{esc(e['id'])}</td><td><div class='text'>{esc(e['question'])}</div></td><td>(no reference)</td>"
             f"{_example_cell(e, 'base')}{_example_cell(e, 'tuned')}</tr>"
             for e in result["examples"]]
    return f"<table>{head}{''.join(rows)}</table>"


def _accuracy_table(result: dict[str, Any]) -> str:
    from r1helpers.evaluate.accuracy import summary_rows

    rows = summary_rows(result.get("accuracy"))
    if not rows:
        return ""
    head = "".join(f"<th>{esc(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td class='{'num' if k not in ('scoring', 'verdict') else esc(v)}'>{esc(v)}</td>"
                                    for k, v in r.items()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _generated_counts(result: dict[str, Any]) -> str:
    s = (result.get("accuracy") or {}).get("scorings", {}).get("generated")
    if not s:
        return ""
    b, a = s["before"], s["after"]
    return (f"<p>Generated multiple-choice answers ({s['n']} per model): reasoning closed with &lt;/think&gt; "
            f"{b['think_closed']} → {a['think_closed']}, EOS reached {b['eos']} → {a['eos']}, unparseable "
            f"(counted wrong) {b['unparsed']} → {a['unparsed']}, read from the option text instead of a letter "
            f"{b['by_text']} → {a['by_text']}, answer text equal to the gold answer (normalised) "
            f"{b['exact_match']} → {a['exact_match']}; the letter stated anywhere (lenient read) right "
            f"{s['lenient']['before']['correct']} → {s['lenient']['after']['correct']}. Verdict of the stated "
            f"letter: {s['verdict']}.</p>")


def _mcq_items(result: dict[str, Any]) -> str:
    items = (result.get("accuracy") or {}).get("items") or []
    if not items:
        return ""
    generated = "generated_letter" in items[0]["base"]
    head = ("<tr><th>id</th><th>question</th><th>gold</th><th>base: likelihood</th><th>fine-tuned: likelihood</th>"
            + ("<th>base: stated</th><th>fine-tuned: stated</th>" if generated else "") + "</tr>")

    def pick(e: dict[str, Any], kind: str) -> str:
        if f"{kind}_letter" not in e:
            return "<td>-</td>"  # not in the generated scoring's subset
        letter = e.get(f"{kind}_letter")
        ok = e.get(f"{kind}_correct")
        cell = esc(letter or "(unparseable)")
        if kind == "generated":
            cell += (f"<details><summary>answer</summary><div class='text'>{esc(e.get('generated') or '')}"
                     "</div></details>")
        return f"<td class='{'better' if ok else 'worse'}'>{cell}</td>"

    rows = []
    for it in items:
        opts = "\n".join(f"{k}. {v}" for k, v in it["options"].items())
        rows.append(f"<tr><td>{esc(it['id'])}</td><td><div class='text'>{esc(it['question'])}\n\n{esc(opts)}</div></td>"
                    f"<td>{esc(it['gold'])}</td>{pick(it['base'], 'likelihood')}{pick(it['tuned'], 'likelihood')}"
                    + (f"{pick(it['base'], 'generated')}{pick(it['tuned'], 'generated')}" if generated else "")
                    + "</tr>")
    return f"<details><summary>every multiple-choice question</summary><table>{head}{''.join(rows)}</table></details>"


def _contamination(result: dict[str, Any]) -> str:
    c = (result.get("accuracy") or {}).get("contamination")
    if not c:
        return ""
    return (f"<p>Contamination check: {c['excluded']} of {c['checked']} multiple-choice questions share "
            f"{c['span']} characters with {esc(c['against'])} (after lower-casing and collapsing white space) and "
            f"are left out of the accuracy; {c['kept']} are scored.</p>")


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{esc(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _share(s: dict[str, Any], side: str) -> str:
    return f"{s[side]['correct']}/{s['n']} = {s[side]['accuracy']:.1%} [{s[side]['ci95'][0]:.1%}, {s[side]['ci95'][1]:.1%}]"


def _published(published: list[dict[str, Any]]) -> str:
    return "; ".join(f"{p['model']}: {'about ' if p['approximate'] else ''}{p['accuracy']}% ({p['note']})"
                     for p in published) or "-"


def more_sets_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per further set: likelihood accuracy before and after (95% Wilson), the change, McNemar's p,
    the detectable change, questions left out as contaminated, the estimated T4 minutes and published figures."""
    rows = []
    for m in result.get("more_sets") or []:
        s = m["likelihood"]
        c = m.get("contamination")
        rows.append({"set": m["name"], "n": m["n"],
                     "before (likelihood)": "-" if s is None else _share(s, "before"),
                     "after (likelihood)": "-" if s is None else _share(s, "after"),
                     "change (points)": "-" if s is None else f"{100 * s['delta']:+.1f}",
                     "exact McNemar p": "-" if s is None else round(s["mcnemar"]["p_value"], 4),
                     "detectable change (points)": "-" if s is None or s["detectable_change"] is None
                     else f"±{100 * s['detectable_change']:.1f}",
                     "verdict": m["note"] if s is None else s["verdict"],
                     "left out (contaminated)": "-" if not c else f"{c['excluded']} of {c['checked']}",
                     "T4 minutes (estimated)": m.get("t4_minutes_estimated") or "-",
                     "published (generation, authors' protocols)": _published(m.get("published") or [])})
    return rows


def protocol_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The authors' protocol, one row per read (their lenient matcher, this project's strict parser): before and
    after with 95% Wilson intervals, unparseable counts, the change and McNemar's p; published figures beside."""
    p = result.get("protocol")
    if not p or not p["n"]:
        return []
    rows = []
    for read in ("lenient", "strict"):
        s = p["scorings"][read]
        row = {"read": s["label"], "n": s["n"], "base model (before)": _share(s, "before"),
               "fine-tuned (after)": _share(s, "after"),
               "unparseable before / after": f"{s['before']['unparsed']} / {s['after']['unparsed']}",
               "change (points)": f"{100 * s['delta']:+.1f}", "exact McNemar p": round(s["mcnemar"]["p_value"], 4),
               "verdict": s["verdict"]}
        if read == "lenient":
            row["matched by (before)"] = ", ".join(f"{k} {v}" for k, v in s["before"]["matched_by"].items() if v)
        rows.append(row)
    return rows


def _protocol(result: dict[str, Any]) -> str:
    p = result.get("protocol")
    if not p or not p["n"]:
        return ""
    d = p["protocol"]
    text = (f"<h3>The dataset authors' protocol ({esc(d['source'])})</h3><p>The first {p['n']} questions again, "
            f"as HuatuoGPT-o1's authors evaluate: their prompt (“Please answer the following multiple-choice "
            f"question:”, the question, the options), in {esc(', '.join(p['wrapped_in']))}, sampled "
            f"(temperature {d['temperature']}, top_p {d['top_p']}, at most {d['max_new_tokens']} new tokens"
            + ("" if d["max_new_tokens"] == 2000 else "; the authors allow 2000") + "), read by their lenient "
            "matcher (implemented here from its description) and by this project's strict parser. The lenient "
            "matcher never fails to pick an option: its last resort is the most similar option, a guess, so its "
            "'unparseable' count is only the empty answers; how many answers each rule decided is given.</p>")
    pub = p.get("published") or []
    text += _table(protocol_rows(result))
    if pub:
        text += "<p>Published figures for this set: " + esc(_published(pub)) + ".</p>"
    return text


def _more_sets(result: dict[str, Any]) -> str:
    rows = more_sets_rows(result)
    if not rows:
        return ""
    return ("<h3>Further sets, by option likelihood</h3><p>Each set is scored on its own, both models, by the most "
            "probable option text (no generation); these do not change the verdict. Published figures are for "
            "generated answers under their authors' protocols, cited as reported and not reproduced here, so they "
            "are context, not the same measurement.</p>" + _table(rows))


def _img(images: dict[str, str], name: str) -> str:
    data = images.get(name)
    return "" if data is None else f"<img alt='{esc(name)}' src='data:image/png;base64,{data}'>"


def _answer(result: dict[str, Any], name: str) -> str:
    f = (result.get("findings") or {}).get(name)
    return "" if not f else f"<p class='answer'><b>Answer:</b> {esc(f['answer'])}</p>"


def render(result: dict[str, Any], images: dict[str, str]) -> str:
    """The whole page as one string."""
    css_class = {"helped": "helped", "hurt": "hurt"}.get(result["verdict"], "neutral")
    notes = "".join(f"<li>{esc(n)}</li>" for n in result["notes"])
    fit, behaviour, right = (list(result["findings"][k]["metrics"]) for k in ("fit", "behaviour", "correctness"))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Before / after fine-tuning: {esc(result['settings']['model'])}</title><style>{CSS}</style></head><body>"
        "<h1>Did fine-tuning help? Base vs fine-tuned, three questions</h1>"
        f"<div class='headline {css_class}'><b>Verdict: {esc(result['verdict'])}.</b> {esc(result['headline'])}</div>"
        "<p>Three questions are answered separately. <b>Fits the data?</b> Held-out NLL of the reference reasoning "
        "and answer. <b>Behaves as trained?</b> What the generated held-out answers do. <b>More often right?</b> "
        "Multiple-choice accuracy before and after. Lower held-out loss says the model fits the data's style "
        "better; it does not say the answers are better, so the verdict is <i>helped</i> only when accuracy "
        "improves by the exact McNemar test (p &lt; 0.05; <i>hurt</i> when it falls likewise). Intervals of NLL "
        "and generation deltas are 95% paired bootstrap intervals over questions, and those metrics are "
        "<i>better</i> or <i>worse</i> only when the interval excludes zero; <i>n</i> is the number of "
        "questions a metric rests on.</p>"
        f"<h2>1. Fits the data? (teacher-forced NLL on held-out rows)</h2>{_answer(result, 'fit')}"
        f"{_metrics_table(result, fit)}{_img(images, 'teacher-forced')}"
        f"<h2>2. Behaves as trained? (generated held-out answers)</h2>{_answer(result, 'behaviour')}"
        f"{_metrics_table(result, behaviour)}{_img(images, 'generation')}"
        f"<h2>3. More often right? (multiple-choice accuracy)</h2>{_answer(result, 'correctness')}"
        f"{_accuracy_table(result)}{_generated_counts(result)}{_metrics_table(result, right)}"
        f"{_contamination(result)}{_img(images, 'accuracy')}{_mcq_items(result)}{_protocol(result)}{_more_sets(result)}"
        "<p>Unparseable generated answers (reasoning never closed, or no letter and no option text after "
        "&lt;/think&gt;) are counted wrong, never dropped. The exact McNemar test uses only the questions on "
        "which the two models disagree; the interval of the change is the exact one it inverts (Clopper-Pearson "
        "on those questions), so the two never disagree. The detectable change is the smallest change this set "
        "finds with 80% power at two-sided 0.05, at its n and share of disagreeing questions (normal "
        "approximation for McNemar's test, never below 6 disagreeing questions): a change smaller than it going "
        "unseen is not evidence of no effect. A stated letter that improves only when read after &lt;/think&gt; "
        "and not when read anywhere is a <i>format change</i>, not more knowledge.</p>"
        f"<h2>All deltas</h2>{_img(images, 'deltas')}"
        + (f"<h2>Training</h2>{_img(images, 'loss')}" if "loss" in images else "")
        + f"<h2>Side by side (held-out questions)</h2>{_side_by_side(result)}"
        f"<h2>Settings</h2>{_kv_table(result['settings'])}<ul>{notes}</ul>"
        "</body></html>\n"
    )


def build_report(result: dict[str, Any]) -> str:
    """The whole page, plots included, as text: drawn before anything is written."""
    return render(result, {name: plots.png_base64(fig) for name, fig in plots.figures(result).items()})
