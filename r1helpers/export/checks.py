"""Check exported models against the model that was trained, before anything is kept.

On the training prompt, in float32 (on the GPU when it fits there, else the CPU): the merged 16-bit model against
base + adapter through peft, with the share of the adapter's effect it keeps (`effect_kept`). The GGUF files'
checks are in `gguf_checks.py`, the accuracy parity in `parity.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Tolerances, as stated in the export report. Logits: the largest |difference| relative to the
# reference's logit range. Unquantized copies differ only by compute order and one 16-bit rounding.
LOGIT_TOL = {"merged": 0.02, "f16": 0.01, "bf16": 0.02, "q8_0": 0.05, "q4_k_m": 0.25}
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
    """`n` greedy tokens by argmax, EOS included and not stopping there."""
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


# ---- what an export keeps of the fine-tune -------------------------------------------------------

def _centred(x: np.ndarray) -> np.ndarray:
    """Each position's logits minus their mean: a constant shift changes no probability."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=-1, keepdims=True)


def effect_kept(probes: list[Probe], logits: list[np.ndarray]) -> dict[str, Any] | None:
    """How much of the adapter's own change to the logits an export keeps, over all probe positions, each
    position's logits centred: with E = tuned - base and D = exported - tuned, share_kept = 1 - ||D|| / ||E||
    (1: base + adapter reproduced; 0: as far from it as the base model; below 0: noise larger than the effect).
    `projection` = <exported - base, E> / ||E||^2: how far along the adapter's direction the export goes.
    None without base logits; share_kept None, with a note, when the adapter changes nothing."""
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
