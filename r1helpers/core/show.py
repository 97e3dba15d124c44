"""Tables and plots for a person reading a notebook; nothing here computes results.

Everything returns a pandas DataFrame or a matplotlib Figure, which notebooks
display and headless runs save inside the executed notebook.
"""

from __future__ import annotations

from typing import Any

from r1helpers.core.config import Config


def _pd():
    import pandas as pd

    pd.set_option("display.max_colwidth", 400)
    return pd


def environment_table(env: dict[str, Any]):
    hw, b = env["hardware"], env["backend"]
    gpu = hw["gpus"][0] if hw["gpus"] else None
    rows = [
        ("profile", f"{env['profile']} ({env.get('profile_reason', '')})"),
        ("device", hw["device"]),
        ("GPU", f"{gpu['name']} x{hw.get('gpus_seen', len(hw['gpus']))}, {gpu['total_memory_gib']} GiB, capability "
                f"{gpu['capability'][0]}.{gpu['capability'][1]}" if gpu else "none"),
        ("native bf16 (capability >= 8.0)", hw["bf16"]),
        ("backend", f"{b['name']}: {b['reason']}"),
        ("dtype / 4-bit", f"{b['dtype']} / {b['load_in_4bit']}"),
        ("Kaggle", env["kaggle"]),
    ] + [(f"note {i + 1}", note) for i, note in enumerate(env.get("notes", []))] + [
        (f"version: {k}", v or "not installed") for k, v in env["versions"].items()]
    return _pd().DataFrame(rows, columns=["what", "value"]).set_index("what")


def config_table(cfg: Config):
    from r1helpers.core.config import FIELDS

    flat = cfg.to_dict()
    rows = []
    for key, (_, f) in FIELDS.items():
        section, _, leaf = key.rpartition(".")
        value = flat[section][leaf] if section else flat[leaf]
        rows.append((key, value, f.metadata.get("help", "")))
    return _pd().DataFrame(rows, columns=["field", "value", "meaning"]).set_index("field")


def length_table(stats: dict[str, Any]):
    return _pd().DataFrame(stats["token_lengths"]).T


def length_histogram(stats: dict[str, Any]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for split, lengths in stats["all_lengths"].items():
        if lengths:
            ax.hist(lengths, bins=30, alpha=0.6, label=f"{split} ({len(lengths)})")
    limit = stats["token_lengths"]["train"].get("max_seq_length")
    if limit:
        ax.axvline(limit, color="red", linestyle="--", label=f"max_seq_length {limit}")
    ax.set_xlabel("tokens per example (prompt + reasoning + answer + EOS)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curve(log_history: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for key, label in (("loss", "training loss"), ("eval_loss", "held-out loss")):
        pts = [(r["step"], r[key]) for r in log_history if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return fig


def generations_table(records: list[dict[str, Any]], width: int = 300):
    def cut(s):
        s = s or ""
        return s if len(s) <= width else s[:width] + "…"

    rows = [(r["id"], cut(r["question"]), cut(r["reasoning"]), cut(r["answer"]), r["think_closed"], r["finished"],
             r["new_tokens"]) for r in records]
    cols = ["id", "question", "reasoning", "answer", "</think> reached", "EOS reached", "new tokens"]
    return _pd().DataFrame(rows, columns=cols).set_index("id")


def side_by_side(base: list[dict[str, Any]], tuned: list[dict[str, Any]], width: int = 400):
    def cut(s):
        s = s or ""
        return s if len(s) <= width else s[:width] + "…"

    by_id = {r["id"]: r for r in tuned}
    rows = [(b["id"], cut(b["question"]), cut(b.get("reference_answer")), cut(b["answer"]),
             cut(by_id[b["id"]]["answer"]) if b["id"] in by_id else "") for b in base]
    return _pd().DataFrame(rows, columns=["id", "question", "reference", "base answer", "fine-tuned answer"]).set_index("id")


def lines(items: list[str]) -> None:
    for line in items:
        print(line)



def record_results(run, stage: str, values: dict[str, Any]):
    """Write the stage's key results to `<run>/results/<stage>.json`; return them as a one-column table."""
    from r1helpers.core.runs import write_json_atomic

    write_json_atomic(run.root / "results" / f"{stage}.json", values)
    return _pd().DataFrame({"value": list(values.values())}, index=list(values))
