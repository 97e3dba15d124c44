"""Tables (pandas DataFrames) and plots (matplotlib Figures) for a person reading a notebook; nothing here
computes results."""

from __future__ import annotations

from typing import Any

from r1helpers.core.config import Config


def cut(text: Any, width: int) -> str:
    """`text` shortened to `width` characters, "…" marking the cut; None gives ""."""
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[:width] + "…"


def _pd():
    import pandas as pd

    pd.set_option("display.max_colwidth", 400)
    pd.set_option("display.max_rows", 200)  # the config table has ~65 rows: show them all
    return pd


def gpu_label(env: dict[str, Any]) -> str:
    """"Tesla T4 x2, 14.7 GiB, capability 7.5", or "none" on a machine without a CUDA GPU."""
    hw = env["hardware"]
    gpu = hw["gpus"][0] if hw["gpus"] else None
    if gpu is None:
        return "none"
    return (f"{gpu['name']} x{hw.get('gpus_seen') or len(hw['gpus'])}, {gpu['total_memory_gib']} GiB, "
            f"capability {gpu['capability'][0]}.{gpu['capability'][1]}")


def machine_table(env: dict[str, Any]):
    """The machine, its GPU, and the precision and backend decided for it, each with its reason."""
    hw, b = env["hardware"], env["backend"]
    rows = [
        ("platform", env.get("platform", "")),
        ("Kaggle", env["kaggle"]),
        ("device", hw["device"]),
        ("GPU", gpu_label(env)),
        ("native bf16 (capability >= 8.0)", hw["bf16"]),
        ("dtype", b["dtype"]),
        ("4-bit weights", b["load_in_4bit"]),
        ("backend", b["name"]),
        ("why this backend", b["reason"]),
    ] + [(f"note {i + 1}", note) for i, note in enumerate(env.get("notes", []))]
    return _pd().DataFrame(rows, columns=["what", "value"]).set_index("what")


def versions_table(env: dict[str, Any]):
    """Installed versions of the packages the series depends on."""
    rows = [(k, v or ("none (a CPU build of torch)" if k == "torch.cuda" else "not installed"))
            for k, v in env["versions"].items()]
    return _pd().DataFrame(rows, columns=["package", "version"]).set_index("package")


def secrets_table(env: dict[str, Any]):
    """Which secrets `r1helpers.start` found and where (never their values), and what each one is for."""
    from r1helpers.core.secrets import PURPOSE, SECRETS

    found = env.get("secrets_found") or {}
    rows = [(name, f"found in {found[name]}" if name in found else "not found", PURPOSE[name]) for name in SECRETS]
    return _pd().DataFrame(rows, columns=["secret", "status", "needed for"]).set_index("secret")


def config_table(cfg: Config):
    """Every config field: its value, who set it (the seed recipe, the profile's recipe, or you), and what it means."""
    from r1helpers.core.config import FIELDS, load_config
    from r1helpers.core.recipes import profiles

    flat = cfg.to_dict()
    seed = Config().to_dict()
    recipe = load_config(cfg.profile).to_dict() if cfg.profile in profiles() else seed
    rows = []
    for key, (_, f) in FIELDS.items():
        section, _, leaf = key.rpartition(".")
        if not section:
            continue  # `profile` is shown apart
        value = flat[section][leaf]
        if value != recipe[section][leaf]:
            by = "you (overrides, config_file or cfg.…)"
        elif value == seed[section][leaf]:
            by = "seed recipe"
        else:
            by = f"recipes/{cfg.profile}.yaml"
        rows.append((key, value, by, f.metadata.get("help", "")))
    return _pd().DataFrame(rows, columns=["field", "value", "set by", "meaning"]).set_index("field")


def raw_row(row: dict[str, Any], width: int = 600):
    """One dataset row as a column / value table, long values cut at `width` characters."""
    rows = [(k, cut(v, width), len(str(v))) for k, v in row.items()]
    return _pd().DataFrame(rows, columns=["column", "value", "characters"]).set_index("column")


def length_table(stats: dict[str, Any]):
    """Token counts per split: count, min, mean, median, p95, max, and how many exceed max_seq_length."""
    return _pd().DataFrame.from_dict(stats["token_lengths"], orient="index")


def png(fig, dpi: int = 100):
    """A matplotlib figure as a PNG image, closed; also shown by headless runs (Agg displays no figure)."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Image(data=buf.getvalue(), format="png")


def length_histogram(stats: dict[str, Any]):
    """Histogram of tokens per example for each split, with max_seq_length as a dashed line (a Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = {"train": "training rows", "eval": "held-out rows"}
    for split, lengths in stats["all_lengths"].items():
        if lengths:
            ax.hist(lengths, bins=30, alpha=0.6, label=f"{names.get(split, split)} ({len(lengths)})")
    limit = stats["token_lengths"]["train"].get("max_seq_length")
    if limit:
        over = sum(t.get("over_max_seq_length", 0) for t in stats["token_lengths"].values())
        ax.axvline(limit, color="red", linestyle="--", label=f"max_seq_length {limit} ({over} rows over)")
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
    """One row per generated answer: question, reasoning and answer (cut at `width`), how it ended."""
    rows = [(r["id"], cut(r["question"], width), cut(r["reasoning"], width), cut(r["answer"], width),
             r["think_closed"], r["finished"], r["new_tokens"]) for r in records]
    cols = ["id", "question", "reasoning", "answer", "</think> reached", "EOS reached", "new tokens"]
    return _pd().DataFrame(rows, columns=cols).set_index("id")


def lines(items: list[str]) -> None:
    for line in items:
        print(line)


def record_results(run, stage: str, values: dict[str, Any]):
    """Write a stage's headline numbers to `<run>/results/<stage>.json`; return them as a one-column table."""
    from r1helpers.core.runs import write_json_atomic

    values = dict(values)
    write_json_atomic(run.root / "results" / f"{stage}.json", values)
    table = _pd().DataFrame({"value": list(values.values())}, index=list(values.keys()), dtype=object)
    table.index.name = f"results {stage}"
    return table


def values_table(values: dict[str, Any], name: str = "value", sources: dict[str, str] | None = None):
    """A dict as a table, one row a key; `sources`: where each value comes from (a second column)."""
    pd = _pd()
    table = pd.DataFrame({name: [v if not isinstance(v, (list, dict)) else str(v) for v in values.values()]},
                         index=list(values.keys()), dtype=object)
    if sources is not None:
        table["from"] = [sources.get(k, "") for k in values]
    return table


def differences(before: dict[str, Any], after: dict[str, Any]):
    """The keys whose values differ between two dicts; one row "(none)" when all agree."""
    keys = [k for k in {**before, **after} if before.get(k) != after.get(k)]
    if not keys:
        return _pd().DataFrame({"before": ["-"], "after": ["-"]}, index=["(none: all the same)"], dtype=object)
    return _pd().DataFrame({"before": [str(before.get(k)) for k in keys], "after": [str(after.get(k)) for k in keys]},
                           index=keys, dtype=object)


def lora_table(lora) -> Any:
    """cfg.lora as a table: each setting, its value, and what it does."""
    gc = str(lora.gradient_checkpointing).lower()
    rows = [
        ("r (rank)", lora.r, f"A is {lora.r} x in, B is out x {lora.r}: the trainable update B @ A of each frozen W"),
        ("alpha", lora.alpha, f"the update is scaled by alpha / r = {lora.alpha} / {lora.r} = {lora.alpha / lora.r:g}"),
        ("dropout", lora.dropout, "dropout on the adapter's input while training (0: none)"),
        ("bias", lora.bias, "which biases train besides A and B"),
        ("target_modules", ", ".join(lora.target_modules), "the linear layers of every block that get adapters"),
        ("gradient_checkpointing", gc, {"unsloth": "activations recomputed in the backward pass, offloaded to CPU",
                                        "true": "activations recomputed in the backward pass: slower, less memory",
                                        "false": "every activation kept: fastest, most memory"}[gc]
         + " (the batch plan may turn it off where the GPU has room)"),
        ("random_state", lora.random_state, "seed of A's initialisation (B starts at zero)"),
    ]
    return _pd().DataFrame(rows, columns=["setting", "value", "what it does"]).set_index("setting")


def batch_plan_table(plan, processes: int = 1):
    """A batch plan (a BatchPlan or the dict in train/metrics.json) as a table, with the effective batch
    (micro-batch x accumulation x processes: the rows averaged into one optimizer step)."""
    from dataclasses import asdict, is_dataclass

    p = asdict(plan) if is_dataclass(plan) else dict(plan)
    rows = [
        ("micro-batch", p["micro_batch"]),
        ("accumulation", p["accumulation"]),
        ("processes", processes),
        ("effective batch", p["micro_batch"] * p["accumulation"] * processes),
        ("padding-free", p["padding_free"]),
        ("gradient checkpointing", p.get("gradient_checkpointing") or "as lora.gradient_checkpointing"),
        ("token budget", p.get("token_budget", 0) or "none"),
        ("why", p["reason"]),
    ]
    return _pd().DataFrame(rows, columns=["", "value"]).set_index("")
