"""The comparison's figures (matplotlib): every delta with its interval, accuracy, and the training loss."""

from __future__ import annotations

from typing import Any

COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4", "better": "#2ca02c", "worse": "#d62728", "same": "#7f7f7f"}


def _intervals(ax, rows: list[tuple[str, float, list[float], str]], title: str) -> None:
    """One row per (label, delta, [lo, hi], verdict): the interval and the point, coloured by the verdict."""
    for k, (_, delta, (lo, hi), verdict) in enumerate(rows):
        color = COLORS.get(verdict, COLORS["same"])
        ax.plot([lo, hi], [k, k], color=color, linewidth=2)
        ax.plot([delta], [k], "o", color=color)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)


def delta_figure(result: dict[str, Any]):
    """Each NLL and generation delta with its 95% interval: one that crosses 0 is no evidence either way."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, group, title in ((axes[0], "teacher-forced", "delta NLL (nats/token)"),
                             (axes[1], "generation", "delta of generation rates")):
        rows = [(m["label"].split(" (")[0], m["delta"], m["ci"] or [m["delta"]] * 2, m["verdict"])
                for m in result["metrics"] if m["group"] == group and m["before"] is not None
                and not m["key"].endswith("_tokens")]
        _intervals(ax, rows, title)
    fig.tight_layout()
    return fig


def accuracy_figure(result: dict[str, Any]):
    """Accuracy before and after per scoring with 95% Wilson intervals; the change with its exact paired interval."""
    import matplotlib.pyplot as plt
    import numpy as np

    scorings = [(k, v) for k, v in result["accuracy"]["scorings"].items() if v is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.9 * len(scorings)))
    y = np.arange(len(scorings))
    for offset, side, label in ((-0.2, "before", "base"), (0.2, "after", "tuned")):
        acc = np.array([v[side]["accuracy"] for _, v in scorings])
        ci = np.array([v[side]["ci95"] for _, v in scorings]).T
        left.barh(y + offset, acc, 0.4, xerr=[acc - ci[0], ci[1] - acc], label=label, color=COLORS[label], capsize=3)
    left.set_yticks(y, [k for k, _ in scorings], fontsize=8)
    left.set_xlim(0, 1)
    left.invert_yaxis()
    left.set_title(f"multiple-choice accuracy, {result['accuracy']['n']} questions (95% Wilson)", fontsize=10)
    left.legend(fontsize=8)
    _intervals(right, [(k, 100 * v["delta"], [100 * x for x in v["delta_ci95"]], v["verdict"]) for k, v in scorings],
               "change in accuracy (points), 95% exact paired interval")
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
    ax.set_title("training and held-out loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of a comparison, by name; accuracy only when measured, the loss curve only when logged."""
    figs = {"deltas": delta_figure(result)}
    if any(v is not None for v in ((result.get("accuracy") or {}).get("scorings") or {}).values()):
        figs["accuracy"] = accuracy_figure(result)
    if result.get("log_history"):
        figs["loss"] = loss_figure(result)
    return figs
