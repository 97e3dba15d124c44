"""Views of an export's record (`export/exported.json`) for notebook 05: a table per artefact, the parity table,
the Modelfile and the numbers to keep. Each takes the plain record dict; none loads a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _artefacts(exported: dict[str, Any]) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(name, path, bytes, checks) of each file or folder, GGUF files one by one."""
    rows = []
    for kind, a in exported.get("artefacts", {}).items():
        if kind == "gguf":
            rows += [(f"gguf {g}", str(Path(a["path"]) / f["file"]), f["bytes"], f["checks"])
                     for g, f in a.get("files", {}).items()]
        else:
            rows.append((kind, a["path"], a["bytes"], a.get("checks", {})))
    return rows


def check_line(checks: dict[str, Any]) -> str:
    """One sentence per artefact: the numbers a reader looks for."""
    parts = []
    w = checks.get("weights")
    if isinstance(w, dict) and "max_error_in_rounding_units" in w:
        parts.append(f"weights within {w['max_error_in_rounding_units']} 16-bit roundings")
        if "lora_changes_lost_to_rounding" in w:
            parts.append(f"{w['lora_changes_lost_to_rounding']:.1%} of LoRA changes lost to rounding")
    for name in ("logits_vs_adapter", "transformers"):
        c = checks.get(name)
        if isinstance(c, dict):
            parts.append(f"{name}: max |Δlogit| {c['max_abs_logit_diff']:.2g} ({c['relative_logit_diff']:.2%} of "
                         f"the range), greedy identical {c['greedy_identical']}")
    k = checks.get("adapter_effect_kept")
    if isinstance(k, dict) and k.get("share_kept") is not None:
        parts.append(f"keeps {k['share_kept']:.1%} of the adapter's effect" + (" (warning)" if "warning" in k else ""))
    a = checks.get("accuracy_vs_adapter")
    if isinstance(a, dict):
        parts.append(f"accuracy {a['export_correct']}/{a['questions']} vs the adapter's {a['adapter_correct']}/"
                     f"{a['questions']} (McNemar p {a['mcnemar']['p_value']:.2g})")
    a = checks.get("accuracy")
    if isinstance(a, dict):
        parts.append(f"accuracy {a['adapter_correct']}/{a['questions']} (base alone {a['base_correct']})")
    return "; ".join(parts) or "-"


def check_status(checks: dict[str, Any]) -> str:
    """Which checks ran (and passed: a failed one stops the export) and which were skipped, with why."""
    ran = [k for k, v in checks.items() if isinstance(v, dict) and k != "merge"]
    skipped = [f"{k} ({v.removeprefix('skipped: ')})" for k, v in checks.items()
               if isinstance(v, str) and v.startswith("skipped")]
    out = f"passed: {', '.join(ran)}" if ran else "no check of its own"
    return out + (f"; skipped: {'; '.join(skipped)}" if skipped else "")


def summary_table(exported: dict[str, Any]):
    """One row per written file or folder: where, how big, which checks ran and what they measured."""
    import pandas as pd

    rows = [(name, path, round(size / 2**20, 1), check_status(checks), check_line(checks))
            for name, path, size, checks in _artefacts(exported)]
    return pd.DataFrame(rows, columns=["artefact", "path", "MiB", "status", "checks"]).set_index("artefact")


def parity_table(exported: dict[str, Any]):
    """Per model: multiple-choice accuracy beside base + adapter's (exact McNemar p) and the share of the adapter's
    effect on the probe logits kept. Empty when neither was measured."""
    import pandas as pd

    parity = exported.get("parity") or {}
    acc = (parity.get("accuracy") or {}).get("by_model", {})
    kept = parity.get("effect_kept", {})
    n = (parity.get("accuracy") or {}).get("questions")
    rows = []
    for name in dict.fromkeys([*acc, *kept]):
        a = acc.get(name, {})
        rows.append({"model": {"base": "base (adapter off)", "adapter": "base + adapter (reference)"}.get(name, name),
                     "right": f"{a['correct']}/{n}" if a else "-",
                     "vs adapter (points)": None if "delta_vs_adapter" not in a else round(100 * a["delta_vs_adapter"], 1),
                     "McNemar p": a.get("mcnemar_p"), "verdict": a.get("verdict", ""),
                     "adapter effect kept": kept.get(name, 1.0 if name == "adapter" else None)})
    columns = ["model", "right", "vs adapter (points)", "McNemar p", "verdict", "adapter effect kept"]
    return pd.DataFrame(rows, columns=columns).set_index("model")


def modelfile_text(exported: dict[str, Any]) -> str:
    """The Ollama Modelfile written beside the GGUF files, or why there is none."""
    gguf = exported.get("artefacts", {}).get("gguf")
    path = Path(gguf["path"]) / "Modelfile" if gguf else None
    return path.read_text() if path and path.is_file() else "(no GGUF written, so no Modelfile)"


def key_results(exported: dict[str, Any]) -> dict[str, Any]:
    """Path, size (MiB) and check status of each artefact, and the Hub outcome: the notebook's last table."""
    out: dict[str, Any] = {"output folder": exported.get("output_dir")}
    for name, path, size, checks in _artefacts(exported):
        out[f"{name}: path"] = path
        out[f"{name}: MiB"] = round(size / 2**20, 1)
        out[f"{name}: checks"] = check_status(checks)
        k = checks.get("adapter_effect_kept")
        if isinstance(k, dict) and k.get("share_kept") is not None:
            out[f"{name}: adapter effect kept"] = k["share_kept"]
        a = checks.get("accuracy_vs_adapter")
        if isinstance(a, dict):
            out[f"{name}: accuracy"] = f"{a['export_correct']}/{a['questions']} (adapter {a['adapter_correct']})"
    out["hub"] = exported.get("hub", {}).get("message", "")
    return out
