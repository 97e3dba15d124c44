"""Pure metric functions for the before/after comparison: no model, no torch.

Kept apart from the stage (`compare.py`) so each can be checked on hand-made
cases: an unclosed <think>, an empty answer, an answer cut at the token limit,
identical and disjoint texts.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

from r1helpers.core import prompts

# A difference smaller than this is a tie: float noise is not a win.
TIE_TOLERANCE = 1e-9


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer, tokenizers

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False), tokenizers.DefaultTokenizer(use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over words, by the `rouge-score` package (no stemming); an empty text scores 0."""
    return _rouge()[0].score(reference or "", prediction or "")["rougeL"].fmeasure


def repeated_ngram_share(text: str, n: int = 4) -> float | None:
    """Share of the text's word n-grams that repeat an earlier one (0: none repeats; near 1: a loop).

    Words are as `rouge_l` reads them (lower-cased alphanumeric runs). Of the k n-grams in the
    text, the share is (k - number of distinct n-grams) / k: "a b c d a b c d" has five
    4-grams, four distinct, so 1/5. A text of fewer than n words has no n-grams: None.
    """
    words = _rouge()[1].tokenize(text or "")
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    return (len(grams) - len(set(grams))) / len(grams)


def perplexity(nll: float | None) -> float | None:
    """exp(mean NLL); capped so a diverged model gives a large number, not an overflow."""
    if nll is None:
        return None
    return math.exp(min(nll, 700.0))


@dataclass
class GenerationScores:
    """What one generated answer did, judged from its text and whether EOS came."""

    think_opened: bool
    think_closed: bool
    eos: bool
    cut_at_limit: bool
    empty_answer: bool
    reasoning_tokens: int
    answer_tokens: int
    rouge_l: float | None
    repetition: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_generation(
    generated: str, finished: bool, reference_answer: str | None, count_tokens: Callable[[str], int],
    new_tokens: int | None = None,
) -> GenerationScores:
    """Score one generation (the text after the prompt's `<think>`).

    The prompt opens the reasoning block, so "opened" means the model wrote
    reasoning inside it (or re-opened it itself); "closed" means it reached
    `</think>`. Without EOS the text was cut at max_new_tokens, and any answer
    it holds is partial. ROUGE-L needs a reference: None without one. `repetition` is
    `repeated_ngram_share` of the reasoning and answer together, without the tags (lower
    is better: a model stuck in a loop repeats its 4-grams).

    Lengths are the text re-encoded by `count_tokens`, except an unclosed block
    given `new_tokens`: every generated token was reasoning then, so that count is exact.
    """
    parsed = prompts.split_output(generated or "")
    opened = bool(parsed.reasoning) or (generated or "").lstrip().startswith(prompts.THINK_OPEN)
    reasoning_tokens = count_tokens(parsed.reasoning) if parsed.reasoning else 0
    if not parsed.think_closed and new_tokens is not None:
        reasoning_tokens = max(new_tokens - int(bool(finished)), 0)
    return GenerationScores(
        think_opened=opened,
        think_closed=parsed.think_closed,
        eos=bool(finished),
        cut_at_limit=not finished,
        empty_answer=not parsed.answer,
        reasoning_tokens=reasoning_tokens,
        answer_tokens=count_tokens(parsed.answer) if parsed.answer else 0,
        rouge_l=None if reference_answer is None else rouge_l(parsed.answer, reference_answer),
        repetition=repeated_ngram_share(f"{parsed.reasoning}\n{parsed.answer}"),
    )


@dataclass(frozen=True)
class MetricSpec:
    """How to read a metric: `better` is "lower", "higher" or None (a length: neither is better)."""

    key: str
    label: str
    better: str | None
    group: str


def bootstrap_ci(
    diffs: Sequence[float], samples: int, seed: int, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile interval of the mean paired difference (`scipy.stats.bootstrap`, seeded).

    Questions, not tokens, are resampled: they are the independent units, so the
    interval says how much the mean would move on another draw of held-out questions.
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
    improved = (lo > 0) == (better == "higher")
    return "better" if improved else "worse"


def aggregate(
    spec: MetricSpec, before: Sequence[float | bool | None], after: Sequence[float | bool | None],
    samples: int, seed: int,
) -> dict[str, Any]:
    """Before, after, delta, bootstrap interval, verdict and win/tie/loss over paired questions.

    Pairs where either side is missing are left out, so both means cover the same questions.
    """
    pairs = [(float(b), float(a)) for b, a in zip(before, after) if b is not None and a is not None]
    n = len(pairs)
    out: dict[str, Any] = {"key": spec.key, "label": spec.label, "better": spec.better, "group": spec.group, "n": n}
    if n == 0:
        return {**out, "before": None, "after": None, "delta": None, "ci": None, "verdict": "no data",
                "win_tie_loss": None}
    b, a = [p[0] for p in pairs], [p[1] for p in pairs]
    diffs = [y - x for x, y in pairs]
    ci = bootstrap_ci(diffs, samples, seed)
    return {
        **out,
        "before": statistics.fmean(b),
        "after": statistics.fmean(a),
        "delta": statistics.fmean(diffs),
        "ci": list(ci) if ci else None,
        "verdict": verdict(ci, spec.better, n),
        "win_tie_loss": win_tie_loss(b, a, spec.better),
    }


# ---- paired right/wrong outcomes (multiple-choice accuracy) -------------------------------------

ALPHA = 0.05   # two-sided significance level of every accuracy verdict
POWER = 0.80   # the power at which `detectable_change` is stated


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
    """Exact McNemar test on paired right/wrong outcomes (statsmodels, exact=True).

    b: right before and wrong after (lost); c: wrong before and right after (gained). Under no
    change b ~ Binomial(b + c, 1/2); the p-value is the exact two-sided binomial one.
    """
    from statsmodels.stats.contingency_tables import mcnemar as exact_mcnemar

    before, after = _paired(before, after)
    pairs = list(zip(before, after))
    table = [[pairs.count((True, True)), pairs.count((True, False))],
             [pairs.count((False, True)), pairs.count((False, False))]]
    (both_right, b), (c, both_wrong) = table
    return {"b": b, "c": c, "discordant": b + c, "both_right": both_right, "both_wrong": both_wrong,
            "p_value": float(exact_mcnemar(table, exact=True).pvalue)}


def change_interval(b: int, c: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of the accuracy change (c - b) / n that the exact McNemar test inverts.

    Given the m = b + c questions on which the models disagree, c ~ Binomial(m, π) and the change is
    m (2π - 1) / n; the Clopper-Pearson interval of π (statsmodels, method="beta") maps onto it. It
    excludes 0 exactly when the exact McNemar p is below 1 - level, so the interval and the verdict
    never disagree. It is conditional on m: with no discordant question it is [0, 0].
    """
    m = b + c
    if m == 0:
        return 0.0, 0.0
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(c, m, alpha=1 - level, method="beta")
    return m * (2 * float(lo) - 1) / n, m * (2 * float(hi) - 1) / n


def detectable_change(n: int, discordant: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest accuracy change (a share, either way) a paired comparison of n questions detects.

    Connor's (1987) normal approximation for McNemar's test, at the observed share of discordant
    questions psi = discordant / n: the change d detected with `power` at two-sided `alpha` solves
    sqrt(n) d = z_a sqrt(psi) + z_b sqrt(psi - d^2), with z_a = z(1 - alpha/2) and z_b = z(power), so
        d = sqrt(psi) (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2).
    The exact test adds a floor: with m discordant questions all going one way its p is 2^(1 - m), so
    fewer than m_min (the smallest m with 2^(1 - m) < alpha: 6 at 0.05) never reach significance and
    d >= m_min / n. None when even n questions all gained could not (n < m_min).
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
    """Accuracy of both models on the same questions, the change, its interval, power and a verdict.

    Unparseable answers must already be in the lists as wrong; their counts are reported alongside.
    The verdict follows the exact McNemar test: "better" or "worse" when p < ALPHA, else "no clear
    change". Beside it: Wilson intervals of each accuracy, the change's `change_interval` (it agrees
    with the test) and the `detectable_change` at this n and discordance (two-sided ALPHA, POWER).
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
