"""W&B for stage 03: online with a key and a reachable server, else offline into the run folder, or off."""

from __future__ import annotations

import os

from r1helpers.core.config import Config
from r1helpers.core.ddp import is_main_process
from r1helpers.core.runs import Run
from r1helpers.training.sft import wandb_reachable


def wandb_choice(cfg: Config) -> tuple[str | None, str]:
    """W&B's mode for this config and environment ("online" | "offline", None: off) and why, in words."""
    if not is_main_process():
        return None, "W&B: rank 0 logs"
    mode = cfg.train.wandb
    if mode == "off":
        return None, "W&B off (train.wandb=off)"
    try:
        import wandb  # noqa: F401
    except ImportError:
        return None, "W&B not installed: logging to the run folder only (pip install wandb to add it)"
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") and wandb_reachable() else "offline"
    elif mode == "online" and not wandb_reachable():
        from r1helpers.training.sft import wandb_endpoint

        return "offline", (f"W&B offline: train.wandb=online but {wandb_endpoint()} does not answer, so this run "
                           "logs offline instead of failing; sync later with `wandb sync` on the offline run folder")
    if cfg.train.wandb != "auto":
        why = f"train.wandb={cfg.train.wandb}"
    elif mode == "online":
        why = "a W&B key is set"
    else:
        why = "no W&B key" if not os.environ.get("WANDB_API_KEY") else "a key is set but W&B is unreachable"
    if mode == "offline":
        why += "; sync later with `wandb sync` on the offline run folder"
    return mode, f"W&B {mode} ({why})"


def wandb_setup(cfg: Config, run: Run) -> tuple[list[str], str]:
    """W&B's mode set in its environment (the run folder's train/wandb, project, run name): (report_to, note)."""
    mode, note = wandb_choice(cfg)
    if mode is None:
        return [], note
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_DIR"] = str(run.stage_dir("train"))
    os.environ.setdefault("WANDB_PROJECT", cfg.train.wandb_project)
    os.environ.setdefault("WANDB_NAME", run.root.name)
    os.environ.setdefault("WANDB_SILENT", "true")
    run.stage_dir("train").mkdir(parents=True, exist_ok=True)
    return ["wandb"], note
