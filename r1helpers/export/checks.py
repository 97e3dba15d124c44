"""Check exported models against the model that was trained, before anything is kept.

On the same prompts (the training prompt, token for token): the merged 16-bit model (plain transformers)
against base + adapter through peft, and each GGUF read back by transformers' GGUF loader against the
merged model (llama.cpp's own read-back: `llamacpp.py`); every GGUF tensor against the merged weights; the
GGUF's vocabulary and chat template against the training tokenizer. Logit checks load float32 copies, on a
GPU whose free memory holds one with a third to spare, else on the CPU; where neither does, they are skipped
and the weight checks stand in.

Beside the tolerances, two measures of what the fine-tune keeps: `effect_kept`, the share of the adapter's own
change to the probe logits that an export reproduces, and `accuracy_parity`, each export's multiple-choice
accuracy against base + adapter's on the same questions, with the exact McNemar test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Tolerances, as stated in the export report. Logits: the largest |difference| relative to the
# reference's logit range. Unquantized copies differ only by compute order and one 16-bit rounding.
LOGIT_TOL = {"merged": 0.02, "f16": 0.01, "bf16": 0.02, "q8_0": 0.05, "q4_k_m": 0.25}
# GGUF weights read back: RMS error relative to the tensor's RMS, per stored type.
WEIGHT_TOL = {"F32": 1e-6, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.02, "Q6_K": 0.04, "Q5_K": 0.08, "Q5_0": 0.08,
              "Q5_1": 0.08, "Q4_K": 0.15, "Q4_0": 0.15, "Q4_1": 0.15}
# Kinds whose greedy tokens must equal the reference's, except where the reference itself nearly tied: a
# divergence is accepted only at a token whose reference margin over the candidate's pick is within
# NEAR_TIE x the largest logit difference measured (so the measured difference can explain the flip).
EXACT_GREEDY = ("merged", "f16", "bf16")
NEAR_TIE = 2.0
# The merged model must keep the adapter's effect: its largest logit difference from base + adapter at most
# this share of the adapter's own (base + adapter against the base alone, same positions).
ADAPTER_KEPT_TOL = 0.10


class ExportCheckError(RuntimeError):
    """An exported model does not behave like the model that was trained; it is not kept."""


@dataclass
class Probe:
    prompt_ids: list[int]
    greedy: list[int] = field(default_factory=list)
    logits: Any = None  # np.ndarray over prompt + greedy, float32
    base_logits: Any = None  # the base model's (adapter off) over the same tokens, where the reference has an adapter

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.greedy


def logits_fit(n_params: int, available: int | None = None) -> bool:
    """A float32 copy plus activations must fit, with a third of the memory left over."""
    import psutil

    return n_params * 4 * 1.5 < (psutil.virtual_memory().available if available is None else available)


def check_device(n_params: int) -> str:
    """Where a float32 copy of `n_params` weights runs the logit checks: "cuda" when it fits there, else "cpu"."""
    import torch

    if torch.cuda.is_available() and logits_fit(n_params, torch.cuda.mem_get_info()[0]):
        return "cuda"
    return "cpu"


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 matmuls in full float32 on CUDA (no TF32, which Unsloth's import or a user may turn on)."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- transformers side --------------------------------------------------------------------------

def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """`n` greedy tokens by argmax, EOS included and not stopping there (as llama.cpp's check takes them)."""
    import torch

    out: list[int] = []
    x, past = torch.tensor([prompt_ids], device=next(model.parameters()).device), None
    with torch.no_grad(), full_float32():
        for _ in range(n):
            o = model(input_ids=x, past_key_values=past, use_cache=True)
            past, nxt = o.past_key_values, int(o.logits[0, -1].argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]], device=x.device)
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad(), full_float32():
        return model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu().numpy()


def reference_probes(model, prompts: list[list[int]], n: int) -> list[Probe]:
    """The reference's greedy continuation of each prompt and its logits over prompt + continuation."""
    model.eval()
    probes = [Probe(list(p)) for p in prompts]
    for p in probes:
        p.greedy = hf_greedy(model, p.prompt_ids, n)
        p.logits = hf_logits(model, p.sequence)
    return probes


def compare(probes: list[Probe], logits: list[np.ndarray], greedy: list[list[int]]) -> dict[str, Any]:
    """How far a candidate's logits and greedy tokens are from the reference's."""
    diffs, agree, total, exact = [], 0, 0, 0
    span = max(float(p.logits.max() - p.logits.min()) for p in probes)
    for p, lg, g in zip(probes, logits, greedy):
        diffs.append(float(np.abs(lg - p.logits).max()))
        agree += int((lg.argmax(-1) == p.logits.argmax(-1)).sum())
        total += len(p.logits)
        exact += int(g == p.greedy)
    prefix = [next((i for i, (a, b) in enumerate(zip(g, p.greedy)) if a != b), len(p.greedy))
              for p, g in zip(probes, greedy)]
    divergences = []
    for k, (p, g, at) in enumerate(zip(probes, greedy, prefix)):
        if at < len(p.greedy):  # the row of the reference's logits that picked greedy token `at`
            row = p.logits[len(p.prompt_ids) - 1 + at]
            divergences.append({"prompt": k, "token": at, "reference_margin": float(row[p.greedy[at]] - row[g[at]])})
    out = {
        "prompts": len(probes), "greedy_tokens": len(probes[0].greedy) if probes else 0,
        "greedy_identical": exact == len(probes), "greedy_agreeing_prefix": prefix,
        "greedy_divergences": divergences,
        "top1_agreement": round(agree / max(total, 1), 4),
        "max_abs_logit_diff": max(diffs), "logit_range": span,
        "relative_logit_diff": max(diffs) / max(span, 1e-6),
    }
    if probes and all(p.base_logits is not None for p in probes):
        effect = max(float(np.abs(p.logits - p.base_logits).max()) for p in probes)
        out.update(adapter_effect=effect, adapter_residual_share=max(diffs) / max(effect, 1e-12))
    return out


def judge(kind: str, result: dict[str, Any], what: str) -> dict[str, Any]:
    """Raise when the stated tolerance is broken; otherwise record the tolerance in the result. A failure's
    message says how much of the adapter's effect the candidate keeps, where that was measured."""
    try:
        return _judge(kind, result, what)
    except ExportCheckError as e:
        kept = (result.get("adapter_effect_kept") or {}).get("share_kept")
        if kept is None:
            raise
        raise ExportCheckError(f"{e} (it keeps {kept:.1%} of the adapter's effect on the probe logits)") from None


def _judge(kind: str, result: dict[str, Any], what: str) -> dict[str, Any]:
    tol = LOGIT_TOL[kind]
    result["tolerance"] = f"max |logit diff| <= {tol} x logit range" + (
        f"; greedy tokens identical but where the reference's margin is within {NEAR_TIE:g} x the max logit diff"
        if kind in EXACT_GREEDY else "") + (
        f"; max logit diff <= {ADAPTER_KEPT_TOL:.0%} of the adapter's own effect"
        if "adapter_residual_share" in result else "")
    if result["relative_logit_diff"] > tol:
        raise ExportCheckError(f"{what}: logits differ by {result['max_abs_logit_diff']:.4g} "
                               f"({result['relative_logit_diff']:.3%} of their range; allowed {tol:.0%})")
    share = result.get("adapter_residual_share")
    if share is not None and share > ADAPTER_KEPT_TOL:
        raise ExportCheckError(f"{what}: logits differ by {result['max_abs_logit_diff']:.4g}, "
                               f"{share:.1%} of the adapter's own effect on them ({result['adapter_effect']:.4g}; "
                               f"allowed {ADAPTER_KEPT_TOL:.0%}): the merge lost part of the adapter")
    if kind in EXACT_GREEDY and not result["greedy_identical"]:
        ties = NEAR_TIE * result["max_abs_logit_diff"]
        real = [d for d in result["greedy_divergences"] if d["reference_margin"] > ties]
        if real:
            margins = ", ".join(f"{d['reference_margin']:.4g}" for d in real)
            raise ExportCheckError(
                f"{what}: greedy tokens differ from the reference (agreeing prefixes "
                f"{result['greedy_agreeing_prefix']} of {result['greedy_tokens']}) where the reference's margin "
                f"({margins}) is more than {NEAR_TIE:g} x the max "
                f"logit diff ({result['max_abs_logit_diff']:.4g}), so the difference is not a near tie")
        result["greedy_near_ties"] = len(result["greedy_divergences"])
    result["passed"] = True
    return result


def float32_parameters(path: Path | None, gguf_file: str | None = None, config=None) -> int:
    """The parameter count of a model's config (read from `path` when not given); nothing loads."""
    from transformers import AutoConfig

    from r1helpers.modeling.load import estimated_weights_gib

    config = config or AutoConfig.from_pretrained(str(path), **({"gguf_file": gguf_file} if gguf_file else {}))
    return int(estimated_weights_gib(config, False, "float32") * 2**30 / 4)


def load_float32(path: Path, gguf_file: str | None = None, parameters: int | None = None):
    """The model at `path` in float32, on the GPU when it fits there (`check_device`), else on the CPU.
    `parameters`: its count when known (a GGUF file's config read costs a parse of its whole vocabulary)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(str(path), **kwargs)
    if check_device(parameters or float32_parameters(None, config=config)) == "cuda":
        kwargs["device_map"] = "cuda"
    return AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=torch.float32, **kwargs).eval()


OnModel = Callable[[Any], None]  # called with a loaded model before it is dropped (the accuracy scoring)


def adapter_reference(base_dir: Path, adapter_dir: Path, prompts: list[list[int]], n: int,
                      on_model: OnModel | None = None) -> list[Probe]:
    """Base + adapter through peft, in float32: what the merged model must reproduce. `on_model` gets the peft
    model (adapter on; `model.disable_adapter()` gives the base) while it is loaded."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_float32(base_dir), str(adapter_dir)).eval()
    probes = reference_probes(model, prompts, n)
    with model.disable_adapter():
        for p in probes:
            p.base_logits = hf_logits(model, p.sequence)
    if on_model is not None:
        on_model(model)
    return probes


def run_candidate(model, probes: list[Probe]) -> tuple[list[np.ndarray], list[list[int]]]:
    logits = [hf_logits(model, p.sequence) for p in probes]
    greedy = [hf_greedy(model, p.prompt_ids, len(p.greedy)) for p in probes]
    return logits, greedy


def check_merged(merged_dir: Path, probes: list[Probe], own: list[Probe] | None = None,
                 on_model: OnModel | None = None) -> dict[str, Any]:
    """The merged model against base + adapter (`probes`), with the share of the adapter's effect it keeps
    (`adapter_effect_kept`, not judged here); when it passes, `own` (if given) receives the merged model's own
    probes, the reference of its GGUF files, and `on_model` (if given) gets the loaded model."""
    model = load_float32(merged_dir)
    logits, greedy = run_candidate(model, probes)
    result = compare(probes, logits, greedy)
    result["adapter_effect_kept"] = effect_kept(probes, logits)
    result = judge("merged", result, "merged model vs base + adapter")
    if own is not None:
        own.extend(reference_probes(model, [p.prompt_ids for p in probes], len(probes[0].greedy) if probes else 0))
    if on_model is not None:
        on_model(model)
    return result


def logits_on(model, probes: list[Probe], known: list[Probe], logits: list[np.ndarray]) -> list[np.ndarray]:
    """`model`'s logits over each of `probes`' sequences, taken from `logits` (over `known`'s sequences) where
    the sequence is the same, else computed."""
    have = {tuple(k.sequence): lg for k, lg in zip(known, logits)}
    return [have[tuple(p.sequence)] if tuple(p.sequence) in have else hf_logits(model, p.sequence) for p in probes]


def check_gguf_transformers(gguf_path: Path, probes: list[Probe], kind: str, parameters: int | None = None,
                            adapter_probes: list[Probe] | None = None,
                            on_model: OnModel | None = None) -> dict[str, Any]:
    """transformers' GGUF loader reads the file back (dequantized to float32): its logits and greedy tokens
    against `probes`, the file parsed once (`shared_gguf_reader`) and dequantized in threads. With
    `adapter_probes` (base + adapter's, with the base's logits) the result carries `adapter_effect_kept`, not
    judged here; `on_model` (if given) then gets the loaded model."""
    import logging
    import time

    logging.getLogger("transformers.modeling_gguf_pytorch_utils").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    with shared_gguf_reader(gguf_path), dequantize_in_threads() as dq:
        model = load_float32(gguf_path.parent, gguf_path.name, parameters)
    t1 = time.perf_counter()
    logits, greedy = run_candidate(model, probes)
    result = compare(probes, logits, greedy)
    if adapter_probes:
        result["adapter_effect_kept"] = effect_kept(adapter_probes, logits_on(model, adapter_probes, probes, logits))
    seconds = {"load": round(t1 - t0, 1), "of which dequantizing": round(dq["seconds"], 1),
               "logits and greedy tokens": round(time.perf_counter() - t1, 1)}
    result = judge(kind, {"reader": "transformers GGUF loader", **result,
                          "tensors_dequantized_in_threads": dq["tensors"], "seconds": seconds},
                   f"{gguf_path.name} (transformers)")
    if on_model is not None:
        t2 = time.perf_counter()
        on_model(model)
        seconds["accuracy scoring"] = round(time.perf_counter() - t2, 1)
    return result


# ---- what an export keeps of the fine-tune -------------------------------------------------------

def _centred(x: np.ndarray) -> np.ndarray:
    """Each position's logits minus their mean: a constant added to every logit of a position changes no
    probability, so it is not counted as a difference."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=-1, keepdims=True)


def effect_kept(probes: list[Probe], logits: list[np.ndarray]) -> dict[str, Any] | None:
    """How much of the adapter's own change to the logits an export keeps, over the probes.

    On every probe position (the prompt and base + adapter's greedy tokens) and every vocabulary entry, each
    position's logits centred (`_centred`):

        effect   E = tuned - base          base + adapter against the base alone (the adapter switched off)
        residual D = exported - tuned      what the export changed on top of that
        share_kept = 1 - ||D|| / ||E||     (Euclidean norms over all probe logits together)

    1: the export reproduces base + adapter; 0: it is as far from base + adapter as the base model is (an
    adapter scaled by 0, or a merge that rounds it all away); below 0: farther still (noise larger than the
    adapter's effect). Beside it, `projection` = <exported - base, E> / ||E||^2, how far along the adapter's own
    direction the export goes (1: all the way, 0: not at all): noise across the adapter's direction lowers
    share_kept only, a shrunk adapter lowers both. `per_prompt`: share_kept of each prompt alone.

    None when the probes carry no base logits (the reference is not base + adapter). `share_kept` is None, with
    a note, when the adapter does not change the probe logits (nothing to keep).
    """
    if not probes or any(p.base_logits is None for p in probes):
        return None
    effects = [_centred(p.logits) - _centred(p.base_logits) for p in probes]
    residuals = [_centred(lg) - _centred(p.logits) for p, lg in zip(probes, logits)]
    moved = [_centred(lg) - _centred(p.base_logits) for p, lg in zip(probes, logits)]
    e2 = sum(float(np.sum(e * e)) for e in effects)
    d2 = sum(float(np.sum(d * d)) for d in residuals)
    cells = sum(e.size for e in effects)
    out: dict[str, Any] = {"positions": sum(len(e) for e in effects),
                           "adapter_effect_rms": round(float(np.sqrt(e2 / cells)), 6),
                           "residual_rms": round(float(np.sqrt(d2 / cells)), 6)}
    scale = max(float(np.sqrt(sum(float(np.sum(_centred(p.logits) ** 2)) for p in probes) / cells)), 1e-30)
    if np.sqrt(e2 / cells) <= 1e-7 * scale:
        return {**out, "share_kept": None, "projection": None,
                "note": "the adapter does not change the probe logits: there is no effect to keep"}
    per_prompt = []
    for e, d in zip(effects, residuals):
        en = float(np.linalg.norm(e))
        per_prompt.append(round(1 - float(np.linalg.norm(d)) / en, 4) if en > 0 else None)
    projection = sum(float(np.sum(m * e)) for m, e in zip(moved, effects)) / e2
    return {"share_kept": round(1 - float(np.sqrt(d2 / e2)), 4), "projection": round(projection, 4),
            "per_prompt": per_prompt, **out}


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


_SHARED_READERS: dict[str, Any] = {}  # resolved path -> the gguf.GGUFReader that `shared_gguf_reader` parsed


@contextlib.contextmanager
def shared_gguf_reader(path: Path) -> Iterator[Any]:
    """While open, `gguf.GGUFReader(path)` returns one reader parsed once wherever it is called from, and
    `gguf.get_tensor_name_map` is memoized. transformers' loader parses the file twice and builds the map once
    per module; on the H200 machine, for the 8B q8_0 file, a parse took 11.9 s and the 423 maps 8.3 s."""
    import functools

    import gguf

    key = str(Path(path).resolve())
    if key in _SHARED_READERS:
        yield _SHARED_READERS[key]
        return
    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    first = not _SHARED_READERS
    reader = _SHARED_READERS[key] = original_reader(key)
    if first:
        def shared(file, *args, **kwargs):
            found = _SHARED_READERS.get(str(Path(file).resolve()))
            return found if found is not None and not args and not kwargs else original_reader(file, *args, **kwargs)

        gguf.GGUFReader = shared
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_map)
    try:
        yield reader
    finally:
        del _SHARED_READERS[key]
        if first:
            gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


@contextlib.contextmanager
def dequantize_in_threads(workers: int | None = None) -> Iterator[dict[str, Any]]:
    """While open, `gguf.dequantize` (transformers' loader calls it per tensor, in one thread) dequantizes
    in pieces of rows on `workers` threads: the same numbers. Yields {"tensors", "seconds"} spent in it (0
    tensors: transformers no longer calls it). 8B q8_0 on the H200 machine: 49 s in transformers' loop, 15.9 s."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import gguf

    from r1helpers.core.hardware import cpu_threads
    from r1helpers.export.gguf import row_pieces

    original = gguf.dequantize
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    counts = {"tensors": 0, "seconds": 0.0}
    pool = ThreadPoolExecutor(cpu_threads(workers))

    def threaded(data, qtype):
        t0 = time.perf_counter()
        counts["tensors"] += 1
        spans = row_pieces(data)
        try:
            if qtype in plain or len(spans) < 2:
                return original(data, qtype)
            return np.concatenate(list(pool.map(lambda s: dequantize_piece(data[s[0]:s[1]], qtype), spans)))
        finally:
            counts["seconds"] += time.perf_counter() - t0

    gguf.dequantize = threaded
    try:
        yield counts
    finally:
        gguf.dequantize = original
        pool.shutdown(cancel_futures=True)


# ---- weights and metadata, tensor by tensor --------------------------------------------------------

def dequantize_piece(data, qtype) -> np.ndarray:
    """gguf-py's dequantizing of some rows of a tensor (float32), in cache-sized calls of the type's
    `dequantize_rows` instead of gguf-py's 16 rows at a time, which hold the GIL; the same numbers."""
    import gguf

    from r1helpers.export.gguf import row_pieces

    quant = getattr(gguf.quants, qtype.name, None)  # gguf-py's class for the type: Q8_0, Q4_K, ...
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or \
            not hasattr(quant, "dequantize_rows"):
        return gguf.quants.dequantize(data, qtype)
    if hasattr(quant, "init_grid"):
        quant.init_grid()  # as gguf.quants.dequantize does first (the i-quants' lookup grids)
    spans = row_pieces(data)
    if len(spans) < 2:
        return quant.dequantize_rows(data)
    return np.concatenate([quant.dequantize_rows(data[i:j]) for i, j in spans])  # cache-sized numpy calls


def gguf_weight_check(gguf_path: Path, merged_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Dequantize every GGUF tensor, undo llama.cpp's Q/K layout and compare with the merged weights: each
    tensor's RMS error relative to its RMS, a few rows at a time on `workers` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import gguf
    from safetensors import safe_open

    from r1helpers.core.hardware import cpu_threads
    from r1helpers.export.gguf import read_config, unpermute_qk
    from r1helpers.export.merge import row_chunks, tensor_shapes, weight_files

    config = read_config(merged_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    reader = gguf.GGUFReader(str(gguf_path))
    files = weight_files(merged_dir)
    by_gguf = {names.get_name(hf_name, try_suffixes=(".weight", ".bias")): hf_name
               for hf_name in tensor_shapes(merged_dir)}
    heads = {"q_proj.weight": n_head, "k_proj.weight": n_kv}
    pieces = []  # (tensor, HF name, HF shape, first row, end row)
    for t in reader.tensors:
        hf_name = by_gguf.get(t.name)
        if hf_name is None:
            if t.name.startswith("rope_freqs"):
                continue
            raise ExportCheckError(f"{gguf_path.name}: unexpected tensor {t.name}")
        shape = [int(d) for d in reversed(t.shape)]
        whole = len(shape) < 2 or hf_name.endswith(tuple(heads))  # Q/K are un-permuted across all their rows
        spans = [(0, shape[0])] if whole else row_chunks(shape[0], int(np.prod(shape[1:])))
        pieces += [(t, hf_name, shape, i, j) for i, j in spans]

    def squares(piece) -> tuple[float, float]:
        """(sum of squared differences, sum of squared merged weights) over the piece's rows."""
        t, hf_name, shape, i, j = piece
        data = t.data if (i, j) == (0, shape[0]) else t.data[i:j]
        w = dequantize_piece(data, t.tensor_type).reshape([j - i, *shape[1:]])
        for suffix, n in heads.items():
            if hf_name.endswith(suffix):
                w = unpermute_qk(w, n)
        with safe_open(str(files[hf_name]), framework="pt") as f:
            ref = f.get_slice(hf_name)[i:j].float().numpy().reshape(w.shape)
        diff = (w - ref).ravel()
        return float(np.dot(diff, diff)), float(np.dot(ref.ravel(), ref.ravel()))

    totals: dict[str, list[float]] = {}
    pool = ThreadPoolExecutor(cpu_threads(workers))
    try:
        for (t, *_), (sq_diff, sq_ref) in zip(pieces, pool.map(squares, pieces)):
            acc = totals.setdefault(t.name, [0.0, 0.0])
            acc[0] += sq_diff
            acc[1] += sq_ref
    finally:
        pool.shutdown(cancel_futures=True)
    worst: dict[str, float] = {}
    for t in reader.tensors:
        if t.name not in totals:
            continue
        n = max(1, int(np.prod([int(d) for d in t.shape])))
        sq_diff, sq_ref = totals[t.name]
        rel = float(np.sqrt(sq_diff / n) / max(np.sqrt(sq_ref / n), 1e-12))
        kind = t.tensor_type.name
        worst[kind] = max(worst.get(kind, 0.0), rel)
        if rel > WEIGHT_TOL.get(kind, 0.15):
            raise ExportCheckError(f"{gguf_path.name}: {t.name} ({kind}) is off by {rel:.3%} RMS "
                                   f"(allowed {WEIGHT_TOL.get(kind, 0.15):.1%})")
    missing = set(by_gguf) - set(totals)
    if missing:
        raise ExportCheckError(f"{gguf_path.name}: tensors missing: {sorted(missing)[:4]}")
    return {"tensors": len(totals), "worst_relative_rms_error_by_type": {k: round(v, 6) for k, v in worst.items()}}


def render_template(template: str, question: str, bos: str, eos: str) -> str:
    """Render a GGUF chat template as llama.cpp, LM Studio and Ollama's importers do (Jinja)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(template).render(messages=[{"role": "user", "content": question}],
                                            add_generation_prompt=True, bos_token=bos, eos_token=eos)


def gguf_metadata_check(gguf_path: Path, tokenizer, question: str) -> dict[str, Any]:
    """Vocabulary, special ids and chat template: the GGUF must prompt exactly as training did."""
    from r1helpers.core import prompts
    from r1helpers.export.gguf import read_metadata

    md = read_metadata(gguf_path)
    vocab = tokenizer.get_vocab()
    tokens = md["tokenizer.ggml.tokens"]
    wrong = [t for t, i in vocab.items() if i >= len(tokens) or tokens[i] != t]
    if wrong:
        raise ExportCheckError(f"{gguf_path.name}: {len(wrong)} tokens differ from the tokenizer's, e.g. {wrong[:3]}")
    for key, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("padding", tokenizer.pad_token_id)):
        if md.get(f"tokenizer.ggml.{key}_token_id") != tid:
            raise ExportCheckError(f"{gguf_path.name}: {key} id {md.get(f'tokenizer.ggml.{key}_token_id')} != {tid}")
    bos = prompts.adds_bos(tokenizer)
    if md.get("tokenizer.ggml.add_bos_token") is not None and bool(md["tokenizer.ggml.add_bos_token"]) != bos:
        raise ExportCheckError(f"{gguf_path.name}: add_bos_token={md['tokenizer.ggml.add_bos_token']} but the "
                               f"training tokenizer {'adds' if bos else 'adds no'} BOS")
    template = md.get("tokenizer.chat_template")
    if template != prompts.chat_template(bos=bos):
        raise ExportCheckError(f"{gguf_path.name}: tokenizer.chat_template is not the training prompt's template")
    rendered = render_template(template, question, tokenizer.bos_token, tokenizer.eos_token)
    if rendered != (tokenizer.bos_token if bos else "") + prompts.build_prompt(question):
        raise ExportCheckError(f"{gguf_path.name}: the chat template renders another prompt than training used")
    if tokenizer(rendered, add_special_tokens=False)["input_ids"] != prompts.encode_prompt(tokenizer, question):
        raise ExportCheckError(f"{gguf_path.name}: the rendered template tokenizes differently from training")
    return {"tokens": len(tokens), "pre_tokenizer": md.get("tokenizer.ggml.pre"), "adds_bos": bos,
            "chat_template": f"prompts.chat_template(bos={bos}); renders the training prompt token for token"}
