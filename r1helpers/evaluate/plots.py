"""The comparison's plots (matplotlib): teacher-forced, generation, deltas, accuracy and loss, and PNG encoding."""

from __future__ import annotations

import base64
import io
from typing import Any

COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4", "better": "#2ca02c", "worse": "#d62728", "same": "#7f7f7f"}
RATE_KEYS = ("think_opened", "think_closed", "eos", "cut_at_limit", "empty_answer", "repetition", "rouge_l",
             "semantic_similarity")
LENGTH_KEYS = ("reasoning_tokens", "answer_tokens")
NLL_KEYS = ("cot_nll", "answer_nll", "completion_nll")


def _metric(result: dict[str, Any], key: str) -> dict[str, Any]:
    return next(m for m in result["metrics"] if m["key"] == key)


def _with_data(result: dict[str, Any], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [m for m in (_metric(result, k) for k in keys) if m["before"] is not None]


def _bars(ax, metrics: list[dict[str, Any]], title: str) -> None:
    import numpy as np

    y = np.arange(len(metrics))
    ax.barh(y - 0.2, [m["before"] for m in metrics], 0.4, label="base", color=COLORS["base"])
    ax.barh(y + 0.2, [m["after"] for m in metrics], 0.4, label="fine-tuned", color=COLORS["tuned"])
    ax.set_yticks(y, [m["label"] for m in metrics], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def teacher_forced_figure(result: dict[str, Any]):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
    _bars(left, _with_data(result, NLL_KEYS), "mean NLL per token on held-out references (lower is better)")
    base = [r["completion_nll"] for r in result["nll"]["base"]]
    tuned = [r["completion_nll"] for r in result["nll"]["tuned"]]
    pts = [(b, t) for b, t in zip(base, tuned) if b is not None and t is not None]
    if pts:
        right.scatter(*zip(*pts), s=18, color=COLORS["tuned"])
        lo, hi = min(min(p) for p in pts), max(max(p) for p in pts)
        pad = (hi - lo) * 0.05 or 0.05
        right.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color=COLORS["same"], linewidth=1)
    right.set_xlabel("base completion NLL", fontsize=9)
    right.set_ylabel("fine-tuned completion NLL", fontsize=9)
    right.set_title("per question (below the line: helped)", fontsize=10)
    fig.tight_layout()
    return fig


def generation_figure(result: dict[str, Any]):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    _bars(left, _with_data(result, RATE_KEYS), "generations: rates and similarity (0 to 1)")
    left.set_xlim(0, 1.05)
    _bars(right, _with_data(result, LENGTH_KEYS), "generations: mean length (tokens)")
    fig.tight_layout()
    return fig


def delta_figure(result: dict[str, Any]):
    """Each delta with its 95% interval: an interval that crosses 0 is no evidence either way."""
    import matplotlib.pyplot as plt

    groups = [("teacher-forced: delta NLL (nats/token)", _with_data(result, NLL_KEYS)),
              ("generations: delta of rate or similarity", _with_data(result, RATE_KEYS))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, (title, metrics) in zip(axes, groups):
        for k, m in enumerate(metrics):
            color = COLORS.get(m["verdict"], COLORS["same"])
            lo, hi = m["ci"] or (m["delta"], m["delta"])
            ax.plot([lo, hi], [k, k], color=color, linewidth=2)
            ax.plot([m["delta"]], [k], "o", color=color)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(metrics)), [m["label"] for m in metrics], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_figure(result: dict[str, Any]):
    """Accuracy before and after per scoring with 95% Wilson intervals; the change with its exact paired interval."""
    import matplotlib.pyplot as plt
    import numpy as np

    scorings = [(k, v) for k, v in result["accuracy"]["scorings"].items() if v is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.9 * len(scorings)))
    y = np.arange(len(scorings))
    for offset, side, label, color in ((-0.2, "before", "base", COLORS["base"]),
                                       (0.2, "after", "fine-tuned", COLORS["tuned"])):
        acc = np.array([v[side]["accuracy"] for _, v in scorings])
        lo = np.array([v[side]["ci95"][0] for _, v in scorings])
        hi = np.array([v[side]["ci95"][1] for _, v in scorings])
        left.barh(y + offset, acc, 0.4, xerr=[acc - lo, hi - acc], label=label, color=color, capsize=3)
    chance = [1 / len(it["options"]) for it in result["accuracy"]["items"]]
    if chance:
        left.axvline(sum(chance) / len(chance), color="black", linestyle=":", linewidth=1, label="chance")
    left.set_yticks(y, [k for k, _ in scorings], fontsize=8)
    left.set_xlim(0, 1)
    left.invert_yaxis()
    left.set_title(f"multiple-choice accuracy, {result['accuracy']['n']} questions (95% Wilson)", fontsize=10)
    left.legend(fontsize=8)
    for k, (_, v) in enumerate(scorings):
        color = COLORS.get(v["verdict"], COLORS["same"])
        right.plot([100 * x for x in v["delta_ci95"]], [k, k], color=color, linewidth=2)
        right.plot([100 * v["delta"]], [k], "o", color=color)
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(y, [k for k, _ in scorings], fontsize=8)
    right.set_ylim(-0.6, len(scorings) - 0.4)
    right.invert_yaxis()
    right.set_title("change in accuracy (points), 95% exact paired interval", fontsize=10)
    fig.tight_layout()
    return fig


def loss_figure(result: dict[str, Any]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    for key, label in (("loss", "training loss"), ("eval_loss", "held-out loss")):
        pts = [(r["step"], r[key]) for r in result["log_history"] if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training and held-out loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _measured(result: dict[str, Any]) -> bool:
    mcq = result.get("accuracy")
    return bool(mcq) and any(v is not None for v in mcq["scorings"].values())


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The plots of a comparison, by name; accuracy only when measured, the loss curve only when logged."""
    figs = {"teacher-forced": teacher_forced_figure(result), "generation": generation_figure(result),
            "deltas": delta_figure(result)}
    if _measured(result):
        figs["accuracy"] = accuracy_figure(result)
    if result.get("log_history"):
        figs["loss"] = loss_figure(result)
    return figs


def png_base64(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
