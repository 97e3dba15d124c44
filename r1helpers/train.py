"""LoRA supervised fine-tuning with TRL's SFTTrainer and the recipe's settings.

Checkpoints go to the run folder every `train.save_steps`; a rerun resumes from the
latest complete one made with the same settings (other settings: they are cleared,
never resumed; `train.resume=false` starts over). W&B logs online with a key,
offline without one, and its absence never stops training.

    python -m r1helpers.pipeline --stages 03
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .distributed import barrier, is_main_process, per_process, print0, trainer_kwargs, world_size
from .modeling import Loaded, trainable_parameters
from .runs import Run, atomic_dir, stage_fingerprint, write_json_atomic, write_text_atomic


def wandb_setup(cfg: Config, run: Run) -> tuple[list[str], str]:
    """Decide W&B's mode from the config and the presence of a key; returns (report_to, note)."""
    if not is_main_process():
        return [], "W&B: rank 0 logs"
    mode = cfg.train.wandb
    if mode == "off":
        return [], "W&B off (train.wandb=off)"
    try:
        import wandb  # noqa: F401
    except ImportError:
        return [], "W&B not installed: logging to the run folder only (pip install wandb to add it)"
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") and wandb_reachable() else "offline"
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_DIR"] = str(run.stage_dir("train"))
    os.environ.setdefault("WANDB_PROJECT", cfg.train.wandb_project)
    os.environ.setdefault("WANDB_NAME", run.root.name)
    os.environ.setdefault("WANDB_SILENT", "true")
    run.stage_dir("train").mkdir(parents=True, exist_ok=True)
    if cfg.train.wandb != "auto":
        why = f"train.wandb={cfg.train.wandb}"
    elif mode == "online":
        why = "a W&B key is set"
    else:
        why = "no W&B key" if not os.environ.get("WANDB_API_KEY") else "a key is set but W&B is unreachable"
    if mode == "offline":
        why += "; sync later with `wandb sync` on the offline run folder"
    return ["wandb"], f"W&B {mode} ({why})"


def wandb_reachable(timeout: float = 3.0) -> bool:
    """An online run without network hangs in retries; check the API host answers first."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last (after adapter, optimizer, scheduler and RNG
    states), so a kill mid-save leaves it missing or cut short."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    step = checkpoint.name.rsplit("-", 1)[-1]
    return str(state.get("global_step")) == step and any(checkpoint.glob("adapter_model.*"))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that was fully written."""
    if not ckpt_dir.is_dir():
        return None
    done = [(int(p.name.rsplit("-", 1)[-1]), p) for p in ckpt_dir.glob("checkpoint-*")
            if p.name.rsplit("-", 1)[-1].isdigit() and _complete(p)]
    return max(done)[1] if done else None


def _checkpoint_dir(cfg: Config, run: Run, resume: bool) -> tuple[Path, Path | None]:
    """Rank 0 clears or keeps the checkpoints; every rank then resumes from the same one."""
    ckpt = run.stage_dir("train") / "checkpoints"
    stamp = ckpt / "fingerprint.txt"
    fp = stage_fingerprint(cfg, "train")
    if is_main_process():
        if ckpt.exists() and (not resume or not stamp.is_file() or stamp.read_text().strip() != fp):
            print("starting over: discarding checkpoints " + (
                "(train.resume=false)" if not resume else "made with other settings"))
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stamp, fp + "\n")
    barrier()
    return ckpt, latest_checkpoint(ckpt) if resume else None


# GPUs with at least this much memory fold gradient accumulation into one larger
# micro-batch (same effective batch, fewer and fuller kernel launches).
LARGE_GPU_GIB = 40.0
MAX_MICRO_BATCH = 8


@dataclass
class BatchPlan:
    micro_batch: int
    accumulation: int
    padding_free: bool
    reason: str


def plan_batches(cfg: Config, backend: str, gpu_memory_gib: float | None) -> BatchPlan:
    """The micro-batch, accumulation and padding mode to train with, keeping the effective batch.

    Padding-free batches drop pad tokens and keep examples apart (Unsloth's varlen
    attention); the transformers path has no such kernel here, so it stays padded.
    """
    t = cfg.train
    pf = {"true": True, "false": False}.get(str(t.padding_free).lower(), backend == "unsloth")
    if pf and backend != "unsloth":
        raise ConfigError(
            f"train.padding_free=true needs the Unsloth backend (this run uses {backend}): transformers' SDPA "
            "attention lets the examples of a padding-free row attend to each other (measured by "
            "r1helpers.bench.padding_free_check); set train.padding_free=auto or false")
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if t.batch_plan == "as_set" or gpu_memory_gib is None or gpu_memory_gib < LARGE_GPU_GIB:
        why = "as set" if t.batch_plan == "as_set" else (
            "no GPU" if gpu_memory_gib is None else f"{gpu_memory_gib:.0f} GiB GPU keeps the recipe's micro-batch")
        return BatchPlan(t.per_device_train_batch_size, t.gradient_accumulation_steps, pf, why)
    micro = max(d for d in range(1, min(effective, MAX_MICRO_BATCH) + 1) if effective % d == 0)
    return BatchPlan(micro, effective // micro, pf,
                     f"{gpu_memory_gib:.0f} GiB GPU: micro-batch {micro} x accumulation {effective // micro} "
                     f"(effective batch {effective}, as the recipe)")


def sft_config(cfg: Config, loaded: Loaded, output_dir: Path, report_to: list[str], has_eval: bool,
               plan: BatchPlan | None = None):
    from trl import SFTConfig

    t = cfg.train
    dtype = loaded.backend.dtype
    on_gpu = loaded.device.type == "cuda"
    eval_on = has_eval and t.eval_steps > 0
    plan = plan or plan_batches(cfg, loaded.backend.name, gpu_memory_gib())
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=plan.micro_batch,
        per_device_eval_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        padding_free=plan.padding_free,
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        optim=t.optim,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=2,
        bf16=on_gpu and dtype == "bfloat16",
        fp16=on_gpu and dtype == "float16",
        max_length=cfg.model.max_seq_length,
        packing=False,
        report_to=report_to or "none",
        run_name=run_name_from(output_dir),
        **trainer_kwargs(),
        # Headless (papermill): plain log lines from transformers' printer instead of bars.
        disable_tqdm=os.environ.get("R1HELPERS_HEADLESS") == "1",
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


def gpu_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


def run_name_from(output_dir: Path) -> str:
    return Path(output_dir).parents[1].name


@dataclass
class TrainResult:
    adapter_dir: Path
    log_history: list[dict[str, Any]]
    metrics: dict[str, Any]

    def losses(self, key: str = "loss") -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.log_history if key in r]


def oom_advice(cfg: Config, plan: BatchPlan) -> str:
    """What to change, with the values that ran out of memory, so the user need not look them up."""
    return (
        f"CUDA out of memory in training (micro-batch {plan.micro_batch} x accumulation {plan.accumulation}, "
        f"model.max_seq_length={cfg.model.max_seq_length}, model.load_in_4bit={cfg.model.load_in_4bit}, "
        f"lora.r={cfg.lora.r}). Lower train.per_device_train_batch_size and raise "
        "train.gradient_accumulation_steps to keep the effective batch (with train.batch_plan=as_set, so "
        "it is not enlarged again), lower model.max_seq_length, set lora.gradient_checkpointing=unsloth, "
        "or load in 4-bit (model.load_in_4bit=true)."
    )


def is_oom(e: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError that CUDA libraries raise for the same cause."""
    import torch

    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def train(cfg: Config, run: Run, loaded: Loaded, prepared, resume: bool | None = None) -> TrainResult:
    """Fine-tune `loaded` (a peft model) and save the adapter and tokenizer in the run folder.

    `resume` (default: train.resume) continues from the latest complete checkpoint
    made with the same settings; False starts over from step 0.
    """
    import torch
    from trl import SFTTrainer

    out = run.stage_dir("train")
    ckpt_dir, resume_from = _checkpoint_dir(cfg, run, cfg.train.resume if resume is None else resume)
    report_to, wandb_note = wandb_setup(cfg, run)
    print0(wandb_note)
    if resume_from:
        print0(f"resuming from {resume_from.name}")
    has_eval = len(prepared.eval) > 0
    processes = world_size()
    plan = plan_batches(per_process(cfg, processes), loaded.backend.name, gpu_memory_gib())
    across = f" x {processes} processes" if processes > 1 else ""
    print0(f"batches: micro-batch {plan.micro_batch} x accumulation {plan.accumulation}{across}, "
           f"padding-free {plan.padding_free} ({plan.reason})")
    args = sft_config(cfg, loaded, ckpt_dir, report_to, has_eval, plan)
    loaded.model.config.use_cache = False
    trainer = SFTTrainer(
        model=loaded.model, processing_class=loaded.tokenizer, args=args,
        train_dataset=prepared.trainer_columns("train"),
        eval_dataset=prepared.trainer_columns("eval") if has_eval and cfg.train.eval_steps > 0 else None,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as e:
        if not is_oom(e):
            raise
        raise RuntimeError(oom_advice(cfg, plan)) from e
    finally:
        if "wandb" in report_to:
            import wandb

            wandb.finish()
    seconds = time.perf_counter() - t0
    trainable, total = trainable_parameters(loaded.model)
    metrics = {
        **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "seconds": round(seconds, 2),
        "resumed_from": resume_from.name if resume_from else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "backend": loaded.backend.name,
        "batch_plan": asdict(plan),
        "processes": processes,
        "wandb": wandb_note,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    history = trainer.state.log_history
    adapter_dir = out / "adapter"
    if is_main_process():
        with atomic_dir(adapter_dir) as tmp:
            loaded.model.save_pretrained(str(tmp))
            loaded.tokenizer.save_pretrained(str(tmp))
        write_json_atomic(out / "log_history.json", history)
        write_json_atomic(out / "metrics.json", metrics)
        run.write_manifest(cfg, "train", metrics=metrics)
    barrier()
    return TrainResult(adapter_dir, history, metrics)


def load_result(run: Run) -> TrainResult:
    out = run.stage_dir("train")
    return TrainResult(out / "adapter", json.loads((out / "log_history.json").read_text()),
                       json.loads((out / "metrics.json").read_text()))


def ensure_trained(cfg: Config, run: Run, prepared, force: bool = False, resume: bool | None = None) -> TrainResult:
    """Reuse the run folder's adapter when trained with these settings; otherwise train it,
    resuming an interrupted run unless train.resume=false (or resume=False) says start over."""
    if not force and run.is_current(cfg, "train") and (run.stage_dir("train") / "adapter").is_dir():
        return load_result(run)
    from .modeling import add_lora, load_base

    print0(run.why_stale(cfg, "train") if not force else "train: retraining (force=True)")
    loaded = add_lora(load_base(cfg), cfg)
    return train(cfg, run, loaded, prepared, resume=resume)
