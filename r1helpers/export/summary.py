"""Views of an export's record (`export/exported.json`): tables for the notebook, numbers to keep.

Every function takes the plain record dict that stage 05 writes and returns a pandas
DataFrame, a dict or a string; none loads a model or reads the config.

    exported = json.load(open("runs/default/export/exported.json"))
    summary_table(exported)   # one row per file or folder: path, MiB, what its checks measured
    key_results(exported)     # path, size and check status of each artefact, for record_results
    parity_table(exported)    # per model: multiple-choice accuracy beside the adapter's, share of its effect kept
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Entries of a checks dict that describe the work rather than check it.
NOT_CHECKS = ("merge",)


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
    if isinstance(checks.get("loads_with_peft"), dict):
        parts.append("loads with peft: base + this adapter is the merged model's reference")
    if isinstance(checks.get("logits_vs_adapter"), dict):
        c = checks["logits_vs_adapter"]
        parts.append(f"vs base+adapter: max |Δlogit| {c['max_abs_logit_diff']:.2g}, greedy identical "
                     f"{c['greedy_identical']}")
    w = checks.get("weights")
    if isinstance(w, dict) and "max_error_in_rounding_units" in w:
        parts.append(f"weights within {w['max_error_in_rounding_units']} 16-bit roundings")
        if "lora_changes_lost_to_rounding" in w:
            parts.append(f"{w['lora_changes_lost_to_rounding']:.1%} of LoRA changes lost to rounding")
    k = checks.get("adapter_effect_kept")
    if isinstance(k, dict) and k.get("share_kept") is not None:
        parts.append(f"keeps {k['share_kept']:.1%} of the adapter's effect" + (" (warning)" if "warning" in k else ""))
    a = checks.get("accuracy_vs_adapter")
    if isinstance(a, dict):
        parts.append(f"accuracy {a['export_correct']}/{a['questions']} vs the adapter's {a['adapter_correct']}/"
                     f"{a['questions']} (McNemar p {a['mcnemar']['p_value']:.2g})")
    a = checks.get("accuracy")
    if isinstance(a, dict):
        parts.append(f"accuracy {a['adapter_correct']}/{a['questions']} (base alone {a['base_correct']}/"
                     f"{a['questions']})")
    for reader in ("transformers", "llama.cpp"):
        c = checks.get(reader)
        if isinstance(c, dict):
            parts.append(f"{reader}: max |Δlogit| {c['max_abs_logit_diff']:.2g}, top-1 {c['top1_agreement']:.0%}, "
                         f"greedy identical {c['greedy_identical']}")
        elif isinstance(c, str):
            parts.append(f"{reader}: {c.split(':')[0]}")
    return "; ".join(parts) or "-"


def check_status(checks: dict[str, Any]) -> str:
    """Which checks ran (and passed: a failed one stops the export) and which were skipped, with why."""
    ran = [k for k, v in checks.items() if isinstance(v, dict) and k not in NOT_CHECKS]
    skipped = [f"{k} ({v.removeprefix('skipped: ')})" for k, v in checks.items()
               if isinstance(v, str) and v.startswith("skipped")]
    out = f"passed: {', '.join(ran)}" if ran else "no check of its own"
    return out + (f"; skipped: {'; '.join(skipped)}" if skipped else "")


def summary_table(exported: dict[str, Any]):
    """One row per written file or folder: where, how big, and what its checks measured."""
    import pandas as pd

    rows = [(name, path, size, check_line(checks)) for name, path, size, checks in _artefacts(exported)]
    hub = exported.get("hub", {})
    rows.append(("hub", ", ".join(r["repo_id"] for r in hub.get("repos", [])), None, hub.get("message", "")))
    df = pd.DataFrame(rows, columns=["artefact", "path", "bytes", "checks"]).set_index("artefact")
    df["MiB"] = (df.pop("bytes") / 2**20).round(1)
    return df[["path", "MiB", "checks"]]


def checks_table(exported: dict[str, Any]):
    """Every check of every artefact: what it compared, the measured difference and the tolerance."""
    import pandas as pd

    rows = []
    for name, _, _, checks in _artefacts(exported):
        for check, c in checks.items():
            if check in NOT_CHECKS:
                continue
            if not isinstance(c, dict):
                rows.append((name, check, str(c), ""))
                continue
            if "relative_logit_diff" in c:
                measured = (f"max |Δlogit| {c['max_abs_logit_diff']:.3g} = {c['relative_logit_diff']:.2%} of the "
                            f"logit range; top-1 {c['top1_agreement']:.0%}; greedy identical {c['greedy_identical']}")
            elif "max_error_in_rounding_units" in c:
                measured = (f"{c['tensors']} tensors within {c['max_error_in_rounding_units']} 16-bit roundings of "
                            f"base + B·A·scale; LoRA changed {c.get('weights_changed_by_lora', '?')} weights, "
                            f"{c.get('lora_changes_lost_to_rounding', 0):.1%} of them rounded back to the base value")
            elif "rule" in c and "share_kept" in c:
                measured = ("no effect to keep" if c["share_kept"] is None else
                            f"keeps {c['share_kept']:.1%} of the adapter's effect on the probe logits (projection "
                            f"{c['projection']:.3f}; residual RMS {c['residual_rms']:.3g} vs the adapter's "
                            f"{c['adapter_effect_rms']:.3g})" + (f"; WARNING: {c['warning']}" if "warning" in c else ""))
            elif "export_correct" in c:
                m = c["mcnemar"]
                measured = (f"{c['export_correct']}/{c['questions']} right vs base + adapter's {c['adapter_correct']}/"
                            f"{c['questions']} ({100 * c['delta']:+.1f} points; {m['lost']} lost, {m['gained']} "
                            f"gained; exact McNemar p {m['p_value']:.3g}); {c['answers_differ']} answers differ")
            elif "adapter_correct" in c:
                measured = (f"base + adapter {c['adapter_correct']}/{c['questions']} right, the base alone "
                            f"{c['base_correct']}/{c['questions']} ({c['source']}, {c['scoring']})")
            elif "worst_relative_rms_error_by_type" in c:
                measured = f"{c['tensors']} tensors; worst RMS error by type {c['worst_relative_rms_error_by_type']}"
            else:
                measured = ", ".join(f"{k}: {v}" for k, v in c.items() if k != "passed")
            rows.append((name, check, measured, c.get("tolerance", "")))
    return pd.DataFrame(rows, columns=["artefact", "check", "measured", "tolerance"]).set_index(["artefact", "check"])


def parity_table(exported: dict[str, Any]):
    """One row per model: multiple-choice accuracy (option likelihood, the same questions) beside base +
    adapter's, the change with its exact McNemar p, and the share of the adapter's effect on the probe logits
    that the export keeps (`checks.effect_kept`). Empty when neither was measured."""
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
                     "accuracy": a.get("accuracy"),
                     "vs adapter (points)": None if "delta_vs_adapter" not in a else round(100 * a["delta_vs_adapter"], 1),
                     "McNemar p": a.get("mcnemar_p"), "verdict": a.get("verdict", ""),
                     "adapter effect kept": kept.get(name, 1.0 if name == "adapter" else None)})
    columns = ["model", "right", "accuracy", "vs adapter (points)", "McNemar p", "verdict", "adapter effect kept"]
    return pd.DataFrame(rows, columns=columns).set_index("model")


def space_table(exported: dict[str, Any]):
    """What the free-space check planned: each large file, its estimated size and where it goes."""
    import pandas as pd

    planned = exported.get("space", {}).get("planned", [])
    df = pd.DataFrame(planned, columns=["what", "where", "bytes"])
    df["MiB (estimate)"] = (df.pop("bytes") / 2**20).round(1)
    return df.set_index("what")


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
    hub = exported.get("hub", {})
    out["hub"] = hub.get("message", "")
    return out
