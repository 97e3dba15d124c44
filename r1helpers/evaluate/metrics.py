"""Metric functions for the before/after comparison, no model needed; the statistics are scipy's and statsmodels'."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

from r1helpers.core import prompts

TIE_TOLERANCE = 1e-9  # a difference smaller than this is a tie: float noise is not a win
ALPHA = 0.05          # two-sided significance level of every accuracy verdict
POWER = 0.80          # the power at which `detectable_change` is stated


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer, tokenizers

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False), tokenizers.DefaultTokenizer(use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over words, by the `rouge-score` package (no stemming); an empty text scores 0."""
    return _rouge()[0].score(reference or "", prediction or "")["rougeL"].fmeasure


def repeated_ngram_share(text: str, n: int = 4) -> float | None:
    """Share of the text's word n-grams that repeat an earlier one (near 1: a loop); None under n words.

    "a b c d a b c d" has five 4-grams, four distinct: (5 - 4) / 5.
    """
    words = _rouge()[1].tokenize(text or "")
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    return (len(grams) - len(set(grams))) / len(grams)


def perplexity(nll: float | None) -> float | None:
    """exp(mean NLL); capped so a diverged model gives a large number, not an overflow."""
    return None if nll is None else math.exp(min(nll, 700.0))


def score_generation(
    generated: str, finished: bool, reference_answer: str | None, count_tokens: Callable[[str], int],
    new_tokens: int | None = None,
) -> dict[str, Any]:
    """Score one generation (the text after the prompt's `<think>`): think_opened, think_closed, eos, cut_at_limit,
    empty_answer, reasoning_tokens, answer_tokens, rouge_l, repetition.

    Without EOS the text was cut at max_new_tokens. ROUGE-L needs a reference (else None); `repetition` is
    `repeated_ngram_share` of reasoning and answer without the tags. Lengths are `count_tokens` of the text,
    except an unclosed block given `new_tokens`: every generated token was reasoning then.
    """
    parsed = prompts.split_output(generated or "")
    opened = bool(parsed.reasoning) or (generated or "").lstrip().startswith(prompts.THINK_OPEN)
    reasoning_tokens = count_tokens(parsed.reasoning) if parsed.reasoning else 0
    if not parsed.think_closed and new_tokens is not None:
        reasoning_tokens = max(new_tokens - int(bool(finished)), 0)
    return {"think_opened": opened, "think_closed": parsed.think_closed, "eos": bool(finished),
            "cut_at_limit": not finished, "empty_answer": not parsed.answer, "reasoning_tokens": reasoning_tokens,
            "answer_tokens": count_tokens(parsed.answer) if parsed.answer else 0,
            "rouge_l": None if reference_answer is None else rouge_l(parsed.answer, reference_answer),
            "repetition": repeated_ngram_share(f"{parsed.reasoning}\n{parsed.answer}")}


@dataclass(frozen=True)
class MetricSpec:
    """How to read a metric: `better` is "lower", "higher" or None (a length: neither is better)."""

    key: str
    label: str
    better: str | None
    group: str


def bootstrap_ci(diffs: Sequence[float], samples: int, seed: int, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the mean paired difference over questions (`scipy.stats.bootstrap`, seeded).

    One difference gives that difference twice; none gives None.
    """
    if len(diffs) < 2:
        return (float(diffs[0]),) * 2 if diffs else None
    import numpy as np
    from scipy import stats

    ci = stats.bootstrap((np.asarray(diffs, dtype=float),), np.mean, n_resamples=samples, confidence_level=level,
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def win_tie_loss(before: Sequence[float], after: Sequence[float], better: str | None) -> dict[str, int] | None:
    """Per question, did the fine-tuned model do better (win), the same (tie) or worse (loss)?"""
    if better is None:
        return None
    sign = -1.0 if better == "lower" else 1.0
    out = {"wins": 0, "ties": 0, "losses": 0}
    for b, a in zip(before, after):
        d = sign * (a - b)
        out["wins" if d > TIE_TOLERANCE else "losses" if d < -TIE_TOLERANCE else "ties"] += 1
    return out


def verdict(ci: tuple[float, float] | None, better: str | None, n: int) -> str:
    """"better", "worse" or "no significant change" from where the interval lies relative to 0."""
    if ci is None or n < 2:
        return "too few questions"
    lo, hi = ci
    if lo <= TIE_TOLERANCE and hi >= -TIE_TOLERANCE:
        return "no significant change"
    if better is None:
        return "higher" if lo > 0 else "lower"
    return "better" if (lo > 0) == (better == "higher") else "worse"


def aggregate(spec: MetricSpec, before: Sequence[float | bool | None], after: Sequence[float | bool | None],
              samples: int, seed: int) -> dict[str, Any]:
    """Before, after, delta, bootstrap interval, verdict and win/tie/loss over the questions scored on both sides."""
    pairs = [(float(b), float(a)) for b, a in zip(before, after) if b is not None and a is not None]
    out: dict[str, Any] = {"key": spec.key, "label": spec.label, "better": spec.better, "group": spec.group,
                           "n": len(pairs)}
    if not pairs:
        return {**out, "before": None, "after": None, "delta": None, "ci": None, "verdict": "no data",
                "win_tie_loss": None}
    b, a = [p[0] for p in pairs], [p[1] for p in pairs]
    diffs = [y - x for x, y in pairs]
    ci = bootstrap_ci(diffs, samples, seed)
    return {**out, "before": statistics.fmean(b), "after": statistics.fmean(a),
            "delta": statistics.fmean(diffs), "ci": list(ci) if ci else None,
            "verdict": verdict(ci, spec.better, len(pairs)), "win_tie_loss": win_tie_loss(b, a, spec.better)}


# ---- paired right/wrong outcomes (multiple-choice accuracy) -------------------------------------

def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k of n (statsmodels' `proportion_confint`); (0, 1) when n is 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return min(float(lo), k / n), max(float(hi), k / n)  # no float dust past the observed share


def _paired(before: Sequence[bool], after: Sequence[bool]) -> tuple[list[bool], list[bool]]:
    if len(before) != len(after):
        raise ValueError(f"before has {len(before)} questions and after has {len(after)}; "
                         "score both models on the same questions, in the same order")
    return [bool(x) for x in before], [bool(x) for x in after]


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test (statsmodels) on paired right/wrong outcomes; b: right only before (lost), c: gained."""
    from statsmodels.stats.contingency_tables import mcnemar as exact_mcnemar

    pairs = list(zip(*_paired(before, after)))
    table = [[pairs.count((True, True)), pairs.count((True, False))],
             [pairs.count((False, True)), pairs.count((False, False))]]
    (both_right, b), (c, both_wrong) = table
    return {"b": b, "c": c, "discordant": b + c, "both_right": both_right, "both_wrong": both_wrong,
            "p_value": float(exact_mcnemar(table, exact=True).pvalue)}


def change_interval(b: int, c: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of the accuracy change (c - b) / n that the exact McNemar test inverts, so the two never disagree.

    c ~ Binomial(b + c, π): the Clopper-Pearson interval of π (statsmodels, "beta") mapped onto (b + c)(2π - 1) / n.
    """
    m = b + c
    if m == 0:
        return 0.0, 0.0
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(c, m, alpha=1 - level, method="beta")
    return m * (2 * float(lo) - 1) / n, m * (2 * float(hi) - 1) / n


def detectable_change(n: int, discordant: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest accuracy change (a share, either way) a paired comparison of n questions detects.

    Connor's (1987) normal approximation for McNemar's test at the observed discordant share psi:
    d = sqrt(psi) (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2), never below the exact test's
    floor m_min / n (m_min = 6 at alpha 0.05: fewer discordant questions never reach significance).
    None when n < m_min.
    """
    from scipy.stats import norm

    m_min = next(m for m in range(1, 1000) if 2.0 ** (1 - m) < alpha)
    if n < m_min:
        return None
    psi, z_a, z_b = discordant / n, norm.ppf(1 - alpha / 2), norm.ppf(power)
    d = math.sqrt(psi) * (z_a * math.sqrt(n) + z_b * math.sqrt(n - z_a**2 + z_b**2)) / (n + z_b**2)
    return float(min(max(d, m_min / n), 1.0))


def accuracy_summary(before_correct: Sequence[bool], after_correct: Sequence[bool], before_unparsed: int = 0,
                     after_unparsed: int = 0) -> dict[str, Any]:
    """Accuracy of both models on the same questions: Wilson intervals, the change and its `change_interval`,
    the exact McNemar test, the `detectable_change` and the verdict ("better"/"worse" when p < ALPHA).

    Unparseable answers must already be in the lists as wrong; their counts are reported alongside.
    """
    before, after = _paired(before_correct, after_correct)
    n = len(before)
    if n == 0:
        raise ValueError("no questions to summarise")
    out: dict[str, Any] = {"n": n}
    for side, correct, unparsed in (("before", before, before_unparsed), ("after", after, after_unparsed)):
        k = sum(correct)
        if not 0 <= unparsed <= n - k:
            raise ValueError(f"{side}: {unparsed} unparseable answers but only {n - k} wrong ones; unparseable "
                             "answers must be counted as wrong, not dropped")
        out[side] = {"correct": k, "accuracy": k / n, "ci95": list(wilson_interval(k, n)), "unparsed": unparsed}
    test = mcnemar(before, after)
    out["delta"] = (test["c"] - test["b"]) / n
    out["delta_ci95"] = list(change_interval(test["b"], test["c"], n))
    out["mcnemar"] = test
    out["detectable_change"] = detectable_change(n, test["discordant"])
    out["power"] = {"alpha": ALPHA, "power": POWER, "method": "Connor (1987) normal approximation for McNemar's "
                    "test at the observed discordance, at least the exact test's floor of 6 discordant questions"}
    significant = test["p_value"] < ALPHA
    out["verdict"] = "better" if significant and out["delta"] > 0 else "worse" if significant else "no clear change"
    return out
