"""Model cards and the Hub push (or its dry run) for stage 05, filled in from `cfg` and the run folder (training
metrics, the stage 04 comparison); the plain helpers are in `r1helpers.export.hub`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.runs import Run, read_json
from r1helpers.export import hub


def repo_base(cfg: Config, run: Run) -> str:
    """export.hub_repo, or a placeholder name for the dry run."""
    return cfg.export.hub_repo or hub.default_repo(cfg.model.name, run.root.name)


def dataset_line(source: str) -> str:
    """The dataset as the card names it: a Hub id (or the bundled sample) as given; a local file by its name and
    sha256, a local folder by its name: never this machine's path."""
    path = Path(source).expanduser()
    if hub.hub_dataset(source) or source.startswith("r1helpers/"):
        return f"`{source}`"
    if path.is_file():
        return f"local file `{path.name}` (sha256 `{hub.sha256(path)}`)"
    return f"local dataset `{path.name}`"


def recipe_lines(cfg: Config, train_metrics: dict[str, Any] | None = None) -> list[str]:
    """How the model was trained, as the card's bullet lines."""
    d, lo, t, m = cfg.data, cfg.lora, cfg.train, cfg.model
    train, num = train_metrics or {}, hub.fmt_num
    lines = [
        f"- Base model: `{m.name}`" + (f" (revision `{m.revision}`)" if m.revision else ""),
        f"- Dataset: {dataset_line(d.source)}" + (f", config `{d.config_name}`" if d.config_name else "")
        + f", split `{d.split}`: the first {d.train_rows} rows train; the next {d.eval_rows} are held out and never "
          f"trained on; rows over {m.max_seq_length} tokens: {d.overlong}",
        f"- LoRA: r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, bias={lo.bias}, on {', '.join(lo.target_modules)}",
        f"- Training: {t.max_steps} steps, batch {t.per_device_train_batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}, learning rate {t.learning_rate} ({t.lr_scheduler_type}, warm-up "
        f"{t.warmup_steps}), optimizer {t.optim}, weight decay {t.weight_decay}, seed {t.seed}",
        f"- Base weights while training: {'4-bit (QLoRA)' if m.load_in_4bit else 'full precision'}; the export merges "
        "the adapter into the base model's 16-bit weights, not into dequantized 4-bit ones",
    ]
    if train.get("train_loss") is not None:
        lines.append(f"- Training loss: {num(train['train_loss'])} (mean per token of the logged training losses over "
                     f"all {t.max_steps} steps, prompt tokens included; {train.get('backend', '?')} backend, "
                     f"{num(train.get('seconds'))} s). Not comparable with the held-out completion NLL in the "
                     "comparison, which scores only the completion")
    return lines


def card(cfg: Config, run: Run, kind: str, files: list[tuple[str, int]],
         checks: dict[str, Any] | None = None) -> str:
    """The model card of one artefact (adapter | merged | gguf) of this run."""
    try:
        train_metrics = read_json(run.path("train_metrics"))
    except (OSError, ValueError):
        train_metrics = {}
    return hub.model_card(
        kind, hub.repo_ids(repo_base(cfg, run))[kind], files, base_model=cfg.model.name,
        recipe=recipe_lines(cfg, train_metrics), dataset=cfg.data.source, train_rows=cfg.data.train_rows,
        max_steps=cfg.train.max_steps, comparison=hub.comparison_summary(run.path("comparison")), checks=checks)


def publish(cfg: Config, run: Run, artefacts: dict[str, Path]) -> dict[str, Any]:
    """Push the artefacts named in export.push, or write the dry run into `export/hub/`; say which."""
    from r1helpers.core.secrets import load_secrets

    load_secrets(ask=False)
    chosen = {k: Path(v) for k, v in artefacts.items() if k in cfg.export.push}
    reason = hub.why_not_push(cfg.export.push, cfg.export.hub_repo)
    repos = hub.repo_ids(repo_base(cfg, run))
    if reason is None:
        return hub.push(chosen, repos, cfg.export.hub_private, os.environ["HF_TOKEN"])
    return hub.dry_run(chosen, repos, reason, run.stage_dir("export") / "hub", cfg.export.hub_private)
