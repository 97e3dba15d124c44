"""What an export keeps of the fine-tune: the adapter's effect judged, and accuracy against base + adapter's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from r1helpers.export.checks import ExportCheckError, full_float32


EFFECT_RULE = "share kept = 1 - |exported - tuned| / |tuned - base| over the probe logits (centred per position)"


def judge_effect(effect: dict[str, Any] | None, what: str, warn: float, minimum: float | None) -> dict[str, Any]:
    """The share of the adapter's effect kept against export.effect_kept_min (raise below it) and
    export.effect_kept_warn (a `warning` below it)."""
    if effect is None:
        return {"passed": True, "share_kept": None, "note": "not measured: no base + adapter reference"}
    out = {**effect, "rule": EFFECT_RULE, "tolerance": f"warn below {warn:.0%}" + (
        f"; fail below {minimum:.0%}" if minimum is not None else "; never fails (export.effect_kept_min unset)")}
    share = effect.get("share_kept")
    if share is not None and minimum is not None and share < minimum:
        raise ExportCheckError(
            f"{what} keeps {share:.1%} of the adapter's own effect on the probe logits (its difference from base + "
            f"adapter has {1 - share:.0%} of the size of the adapter's change; projection on the adapter's direction "
            f"{effect['projection']:.2f}), below export.effect_kept_min={minimum:g}: it behaves more like the base "
            "model, or like noise, than like the fine-tune. Export it unquantized (float16 merge, f16 GGUF) or use "
            "the adapter on the base model with peft; lower export.effect_kept_min only if you accept that.")
    if share is not None and share < warn:
        out["warning"] = (f"{what} keeps only {share:.1%} of the adapter's effect on the probe logits "
                          f"(export.effect_kept_warn={warn:g}): its own error is comparable to what fine-tuning changed")
    out["passed"] = True
    return out


def accuracy_advice(kind: str, dtype: str | None = None) -> str:
    """What to do when an export of `kind` (merged | f16 | bf16 | q8_0 | q4_k_m) loses accuracy."""
    if kind == "merged":
        return (f"The merge into {dtype or '16-bit'} weights lost part of the adapter's effect: merge in float16 "
                "(export.merged_dtype=float16), or keep the adapter and load it on the base model with peft, which "
                "is what was trained and scored.")
    if kind in ("q8_0", "q4_k_m"):
        return (f"Quantizing to {kind} cost accuracy: export the GGUF in f16 (export.gguf=[\"f16\"]) or, when "
                "q4_k_m is what failed, q8_0; or use the merged 16-bit model or the adapter, not a quantized file.")
    return (f"A {kind} GGUF stores the merged weights without quantizing, so it should answer as the merged model "
            "does: compare its weight check, export f16 rather than bf16, or use the merged 16-bit model.")


def mcq_letters(model, tokenizer, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The option each row's most likely text belongs to (`evaluate.accuracy.answer_mcq`, option likelihood,
    mean log-probability per token), in full float32."""
    from r1helpers.evaluate.accuracy import answer_mcq

    with full_float32():
        return [a["likelihood_letter"] for a in answer_mcq(model, tokenizer, rows)]


def correct(rows: Sequence[dict[str, Any]], letters: Sequence[str]) -> list[bool]:
    return [letter == r["answer_idx"] for r, letter in zip(rows, letters)]


def accuracy_parity(rows: Sequence[dict[str, Any]], reference: Sequence[str], candidate: Sequence[str],
                    what: str, advice: str, source: str = "the multiple-choice set") -> dict[str, Any]:
    """An export's answers (`candidate` letters) against base + adapter's (`reference`) on the same `rows`:
    both accuracies and `evaluate.metrics.accuracy_summary` (exact McNemar on the paired right/wrong). A
    significant drop (p < 0.05, fewer right) raises, with one paragraph naming `what` and ending in `advice`."""
    from r1helpers.evaluate.metrics import ALPHA, accuracy_summary

    if not (len(rows) == len(reference) == len(candidate)):
        raise ValueError(f"{len(rows)} questions but {len(reference)} and {len(candidate)} answers")
    s = accuracy_summary(correct(rows, reference), correct(rows, candidate))
    n, test = s["n"], s["mcnemar"]
    out = {"questions": n, "adapter_correct": s["before"]["correct"], "adapter_accuracy": round(s["before"]["accuracy"], 4),
           "export_correct": s["after"]["correct"], "export_accuracy": round(s["after"]["accuracy"], 4),
           "delta": round(s["delta"], 4), "delta_ci95": [round(x, 4) for x in s["delta_ci95"]],
           "mcnemar": {"lost": test["b"], "gained": test["c"], "p_value": round(test["p_value"], 6)},
           "answers_differ": sum(a != b for a, b in zip(reference, candidate)),
           "detectable_change": None if s["detectable_change"] is None else round(s["detectable_change"], 4),
           "verdict": s["verdict"],
           "tolerance": f"no significant drop: fails when exact McNemar p < {ALPHA:g} with fewer right"}
    if s["verdict"] == "worse":
        raise ExportCheckError(
            f"{what} answers fewer of the {n} multiple-choice questions of {source} right than base + adapter, "
            f"on the same questions scored the same way (option likelihood): {s['after']['correct']}/{n} against "
            f"{s['before']['correct']}/{n} ({100 * s['delta']:+.1f} points; {test['b']} questions lost, "
            f"{test['c']} gained; exact McNemar p = {test['p_value']:.3g} < {ALPHA:g}), a significant drop, so it "
            f"is not kept. {advice}")
    out["passed"] = True
    return out
