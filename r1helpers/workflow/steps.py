"""Each stage as the run folder sees it: reuse what was made with these settings, else build it.

The helpers below this layer (r1helpers.data, .modeling, .training, .inference,
.evaluate, .export) take plain objects; these functions take the config tree and
the run folder, decide what is current, and record manifests.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config, validate
from r1helpers.core.ddp import barrier, is_main_process, per_process, print0, trainer_kwargs, world_size
from r1helpers.core.hardware import (BackendChoice, choose_backend, free_memory, headless, is_oom,
                                     unsloth_importable)
from r1helpers.core.runs import (Run, RunFolderConflict, atomic_dir, read_json, read_jsonl, stage_fingerprint,
                                 stage_settings, write_json_atomic, write_jsonl_atomic, write_text_atomic)
from r1helpers.data import DataError, Report, example_lengths, length_stats, load_rows, select_rows, tokenize_rows
from r1helpers.evaluate import accuracy
from r1helpers.evaluate.compare import (answer_similarities, build_comparison, load_embedder, pair_generations,
                                        teacher_forced, write_outputs)
from r1helpers.inference.generate import generate, plan_for_model
from r1helpers.inference.paths import (PATHS, GenerationPath, apply_gpu_cap, choose_generation_path, fallback_path,
                                       gpu_cap_gib, gpu_memory, same_weights)
from r1helpers.inference.plan import GenerationPlan, kv_cache_bytes_for
from r1helpers.modeling.load import Loaded, expected_lora_parameters, release_decode_memory, trainable_parameters
from r1helpers.training.plan import BatchPlan, gpu_memory_gib, plan_batches
from r1helpers.training.sft import last_value, latest_checkpoint, make_trainer, sft_arguments, wandb_reachable


# ---- models, from the config ---------------------------------------------------------------------

def load_tokenizer_for(cfg: Config):
    """`modeling.load.load_tokenizer` with cfg.model's name, revision and pad token."""
    from r1helpers.modeling.load import load_tokenizer

    return load_tokenizer(cfg.model.name, revision=cfg.model.revision, pad_token=cfg.model.pad_token)


def model_kwargs(cfg: Config, choice: BackendChoice) -> dict[str, Any]:
    """The keyword arguments of `load_base` / `load_finetuned` for this config and backend choice."""
    return dict(name=cfg.model.name, max_seq_length=cfg.model.max_seq_length, load_in_4bit=choice.load_in_4bit,
                dtype=choice.dtype, backend=choice.name, revision=cfg.model.revision, pad_token=cfg.model.pad_token)


def load_base_for(cfg: Config, choice: BackendChoice | None = None) -> Loaded:
    """`modeling.load.load_base` with cfg.model's values and the backend and dtype `choose_backend` picks."""
    from r1helpers.modeling.load import load_base

    choice = choice or choose_backend(cfg)
    loaded = load_base(**model_kwargs(cfg, choice))
    loaded.backend = choice  # keeps the reason for the choice
    return loaded


def load_finetuned_for(cfg: Config, adapter_dir: Path, choice: BackendChoice | None = None) -> Loaded:
    """`modeling.load.load_finetuned` with cfg.model's values: the base model plus the adapter in `adapter_dir`."""
    from r1helpers.modeling.load import load_finetuned

    choice = choice or choose_backend(cfg)
    loaded = load_finetuned(adapter_dir, **model_kwargs(cfg, choice))
    loaded.backend = choice
    return loaded


# ---- 02 data ----------------------------------------------------------------------------------

@dataclass
class Prepared:
    train: Any  # datasets.Dataset
    eval: Any
    stats: dict[str, Any]
    path: Path

    def trainer_columns(self, split: str = "train"):
        """Only the token ids go to the trainer; text columns would break its collator."""
        return getattr(self, split).select_columns(["input_ids"])


def build(cfg: Config, tokenizer) -> tuple[Any, dict[str, Any]]:
    """Load, check, split and tokenize with cfg.data's and cfg.model's values; returns a DatasetDict and the statistics."""
    import datasets

    d, max_len = cfg.data, cfg.model.max_seq_length
    columns = (d.question_column, d.cot_column, d.response_column)
    report = Report(overlong_action=d.overlong)
    ds, origin = load_rows(d.source, config_name=d.config_name, split=d.split, lenient=d.lenient, columns=columns,
                           report=report)
    train_rows, eval_rows = select_rows(ds, train_rows=d.train_rows, eval_rows=d.eval_rows, columns=columns,
                                        lenient=d.lenient, origin=origin, report=report)
    # Lengths before any drop, so the histogram shows what max_seq_length cuts off.
    all_lengths = {"train": example_lengths(tokenizer, train_rows), "eval": example_lengths(tokenizer, eval_rows)}
    train = tokenize_rows(train_rows, tokenizer, max_seq_length=max_len, overlong=d.overlong, split="train",
                          report=report)
    held = tokenize_rows(eval_rows, tokenizer, max_seq_length=max_len, overlong=d.overlong, split="eval",
                         report=report)
    if not train:
        raise DataError(f"{origin}: no training rows left after the checks: {report.lines()}")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "eval": datasets.Dataset.from_list(held)})
    stats = {
        "report": report.lines(),
        "counts": {"train": len(train), "eval": len(held)},
        "token_lengths": {k: length_stats(v, max_len) for k, v in all_lengths.items()},
        "all_lengths": all_lengths,
        "eos_ends_every_example": all(r["input_ids"][-1] == tokenizer.eos_token_id for r in train + held),
        "raw": {"dropped_invalid_json": report.dropped_invalid_json, "dropped_not_utf8": report.dropped_not_utf8,
                "dropped_empty": report.dropped_empty, "dropped_duplicate": report.dropped_duplicate,
                "eval_dropped_overlap": report.eval_dropped_overlap, "overlong": report.overlong},
    }
    return dd, stats


def prepare(cfg: Config, run: Run, tokenizer=None, force: bool = False) -> Prepared:
    """The run folder's prepared splits when made with these settings, else rebuilt (stage 02).

    `tokenizer`: the model's, when already loaded (else it is loaded from cfg.model.name).
    """
    import datasets

    def load() -> Prepared:
        dd = datasets.load_from_disk(str(run.path("dataset")))
        return Prepared(dd["train"], dd["eval"], read_json(run.path("data_stats")), run.stage_dir("data"))

    def make() -> Prepared:
        dd, stats = build(cfg, tokenizer if tokenizer is not None else load_tokenizer_for(cfg))
        with atomic_dir(run.path("dataset")) as tmp:
            dd.save_to_disk(str(tmp))
        write_json_atomic(run.path("data_stats"), stats)
        run.write_manifest(cfg, "data", counts=stats["counts"])
        return Prepared(dd["train"], dd["eval"], stats, run.stage_dir("data"))

    return run.reuse_or_build(cfg, "data", make, load, force=force, say=print0)


def eval_questions(prepared: Prepared, n: int) -> list[dict[str, str]]:
    """The first n held-out rows: always the same ones for base and fine-tuned models."""
    rows = prepared.eval.select(range(min(n, len(prepared.eval))))
    return [{"id": f"eval-{r['source_row']}", "question": r["Question"], "reference_cot": r["Complex_CoT"],
             "reference_answer": r["Response"]} for r in rows]


# ---- 03 training -------------------------------------------------------------------------------

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
        # Forced online without a network, the client retries for minutes and then fails the stage.
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
    """Decide W&B's mode from the config and the presence of a key and set its environment
    (the run folder's train/wandb, project, run name); returns (report_to, note)."""
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


def _checkpoint_dir(cfg: Config, run: Run, resume: bool) -> tuple[Path, Path | None]:
    """Rank 0 keeps the checkpoints, or moves them aside; every rank then resumes from the same one.

    Checkpoints of an unfinished training made with other settings are refused (they may hold
    45 minutes of a Kaggle T4), unless the run folder was opened with overwrite; then, and when
    train.resume=false asks to start over, they are moved to <run>/replaced/, never deleted.
    """
    ckpt = run.path("checkpoints")
    stamp, recorded = ckpt / "fingerprint.txt", ckpt / "settings.json"
    fp = stage_fingerprint(cfg, "train")
    if is_main_process():
        has_work = ckpt.exists() and any(ckpt.glob("checkpoint-*"))
        other = has_work and (not stamp.is_file() or stamp.read_text().strip() != fp)
        if other and not run.overwrite:
            old = read_json(recorded) if recorded.is_file() else {}
            changed = [k for k in _diff_keys(old, stage_settings(cfg, "train"))] if old else ["unknown"]
            raise RunFolderConflict(
                f"{ckpt} holds checkpoints of an unfinished training made with other settings (fields that "
                f"differ: {', '.join(changed[:8])}), so they are not discarded. Rerun with the settings they were "
                f"made with to resume, use another run folder (--run-dir), or pass --overwrite (overwrite=True) "
                f"to move them aside to {run.root / 'replaced'}/ and start over; nothing is deleted."
            )
        if has_work and (other or not resume):
            dest = run.root / "replaced" / f"checkpoints-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(ckpt, dest)
            print("starting over: the checkpoints " + ("(train.resume=false)" if not other else
                  "made with other settings") + f" moved aside to {dest}", flush=True)
        ckpt.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stamp, fp + "\n")
        write_json_atomic(recorded, stage_settings(cfg, "train"))
    barrier()
    return ckpt, latest_checkpoint(ckpt) if resume else None


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new)) for k in _diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


@dataclass
class TrainResult:
    adapter_dir: Path
    log_history: list[dict[str, Any]]
    metrics: dict[str, Any]

    def losses(self, key: str = "loss") -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.log_history if key in r]


def oom_advice(cfg: Config, plan: BatchPlan) -> str:
    """What to change, with the values that ran out of memory, so the user need not look them up."""
    no_ckpt = plan.gradient_checkpointing == "false"
    budget = f", at most {plan.token_budget} tokens a pass" if plan.token_budget else ""
    return (
        f"CUDA out of memory in training (micro-batch {plan.micro_batch} x accumulation {plan.accumulation}{budget}, "
        f"model.max_seq_length={cfg.model.max_seq_length}, model.load_in_4bit={cfg.model.load_in_4bit}, "
        f"lora.r={cfg.lora.r}{', gradient checkpointing turned off by the batch plan' if no_ckpt else ''}). "
        "Set train.batch_plan=as_set (exactly the batch and checkpointing you set), lower "
        "train.per_device_train_batch_size and raise train.gradient_accumulation_steps to keep the effective "
        "batch, lower model.max_seq_length, set lora.gradient_checkpointing=unsloth, or load in 4-bit "
        "(model.load_in_4bit=true)."
    )


def lora_arguments(cfg: Config, plan: BatchPlan | None = None) -> dict[str, Any]:
    """The LoRA settings add_lora gets: cfg.lora's values, with the plan's gradient checkpointing."""
    lc = cfg.lora
    return {"r": lc.r, "alpha": lc.alpha, "dropout": lc.dropout, "bias": lc.bias,
            "target_modules": list(lc.target_modules), "random_state": lc.random_state,
            "gradient_checkpointing": plan.checkpointing(lc.gradient_checkpointing) if plan else
            str(lc.gradient_checkpointing).lower(),
            "max_seq_length": cfg.model.max_seq_length}


def with_lora(cfg: Config, base: Loaded, plan: BatchPlan | None = None) -> Loaded:
    """`base` wrapped by add_lora with the config's LoRA settings (and the plan's checkpointing)."""
    from r1helpers.modeling.load import add_lora

    model = add_lora(base.model, backend=base.backend.name, load_in_4bit=base.backend.load_in_4bit,
                     **lora_arguments(cfg, plan))
    return Loaded(model, base.tokenizer, base.backend)


def plan_from_config(cfg: Config, backend: str, gpu_gib: float | None, *, processes: int = 1,
                     lengths: list[int] | None = None, dims: Any = None, base_gib: float | None = None) -> BatchPlan:
    """plan_batches with cfg's values: one of `processes` DDP processes' share of the effective batch."""
    t = per_process(cfg, processes).train
    return plan_batches(t.per_device_train_batch_size, t.gradient_accumulation_steps, backend=backend,
                        gpu_memory_gib=gpu_gib, max_seq_length=cfg.model.max_seq_length,
                        padding_free=t.padding_free, batch_plan=t.batch_plan, token_budget=t.token_budget,
                        lengths=lengths, dims=dims, base_gib=base_gib, processes=processes)


# Where each SFTConfig argument of sft_arguments_for comes from (shown beside the values in notebook 03).
SFT_ARGUMENT_SOURCES = {
    "output_dir": "the run folder's train/checkpoints", "per_device_train_batch_size": "batch plan: micro-batch",
    "per_device_eval_batch_size": "batch plan: micro-batch (at most 8)",
    "gradient_accumulation_steps": "batch plan: accumulation", "padding_free": "batch plan (train.padding_free)",
    "gradient_checkpointing": "batch plan, else lora.gradient_checkpointing",
    "gradient_checkpointing_kwargs": "non-reentrant (DDP-safe) when checkpointing",
    "learning_rate": "train.learning_rate", "warmup_steps": "train.warmup_steps", "max_steps": "train.max_steps",
    "optim": "train.optim", "weight_decay": "train.weight_decay", "lr_scheduler_type": "train.lr_scheduler_type",
    "seed": "train.seed", "data_seed": "train.seed (order of the rows)",
    "bf16": "backend dtype bfloat16 on a GPU (compute capability >= 8.0)",
    "fp16": "backend dtype float16 on a GPU (a T4, capability 7.5)", "max_length": "model.max_seq_length",
    "logging_steps": "train.logging_steps", "eval_strategy": "train.eval_steps > 0 and held-out rows exist",
    "eval_steps": "train.eval_steps", "save_strategy": "train.save_steps > 0", "save_steps": "train.save_steps",
    "report_to": "train.wandb and a W&B key", "run_name": "the run folder's name",
    "disable_tqdm": "headless (papermill) runs log plain lines", "save_total_limit": "fixed: two checkpoints kept",
    "packing": "fixed: one example a row", "dataloader_num_workers": "fixed",
    "remove_unused_columns": "fixed", "ddp_backend": "DDP: nccl on GPUs, gloo on CPU",
    "ddp_find_unused_parameters": "DDP: every LoRA weight gets a gradient", "use_cpu": "DDP without CUDA",
}


def sft_arguments_for(cfg: Config, plan: BatchPlan, output_dir: Path, *, backend: str, dtype: str, on_gpu: bool,
                      report_to: list[str], has_eval: bool, run_name: str) -> dict[str, Any]:
    """sft_arguments with cfg's values and the batch plan: the exact SFTConfig keyword arguments."""
    t = cfg.train
    return sft_arguments(
        output_dir=output_dir, per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation, padding_free=plan.padding_free,
        gradient_checkpointing=plan.checkpointing(cfg.lora.gradient_checkpointing),
        learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, max_steps=t.max_steps, optim=t.optim,
        weight_decay=t.weight_decay, lr_scheduler_type=t.lr_scheduler_type, seed=t.seed,
        logging_steps=t.logging_steps, eval_steps=t.eval_steps, save_steps=t.save_steps,
        max_seq_length=cfg.model.max_seq_length, mixed_precision=dtype if on_gpu else "no", has_eval=has_eval,
        report_to=report_to, run_name=run_name, progress_bars=not headless(),
        ddp=trainer_kwargs(),
    )


def train(cfg: Config, run: Run, loaded: Loaded, prepared, resume: bool | None = None,
          plan: BatchPlan | None = None) -> TrainResult:
    """Fine-tune `loaded` (a peft model) and save the adapter and tokenizer in the run folder.

    `resume` (default: train.resume) continues from the latest complete checkpoint
    made with the same settings; False starts over from step 0. The batch plan, the SFTConfig
    arguments and the LoRA settings used are recorded in train/metrics.json.
    """
    import torch

    ckpt_dir, resume_from = _checkpoint_dir(cfg, run, cfg.train.resume if resume is None else resume)
    report_to, wandb_note = wandb_setup(cfg, run)
    print0(wandb_note)
    if resume_from:
        print0(f"resuming from {resume_from.name}")
    has_eval = len(prepared.eval) > 0
    processes = world_size()
    plan = plan or plan_from_config(cfg, loaded.backend.name, gpu_memory_gib(), processes=processes)
    across = f" x {processes} processes" if processes > 1 else ""
    print0(f"batches: micro-batch {plan.micro_batch} x accumulation {plan.accumulation}{across}, "
           f"padding-free {plan.padding_free} ({plan.reason})")
    args = sft_arguments_for(cfg, plan, ckpt_dir, backend=loaded.backend.name, dtype=loaded.backend.dtype,
                             on_gpu=loaded.device.type == "cuda", report_to=report_to, has_eval=has_eval,
                             run_name=run.root.name)
    trainer = make_trainer(loaded.model, loaded.tokenizer, prepared.trainer_columns("train"),
                           prepared.trainer_columns("eval") if has_eval and cfg.train.eval_steps > 0 else None,
                           args, token_budget=plan.token_budget)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    earlier = _elapsed_before(resume_from)  # the interrupted sessions' training time, kept in each checkpoint
    trainer.add_callback(elapsed_in_checkpoints(earlier))
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
    session_seconds = time.perf_counter() - t0
    seconds = earlier + session_seconds
    trainable, total = trainable_parameters(loaded.model)
    history = trainer.state.log_history
    tokens = last_value(history, "num_tokens")  # TRL counts the tokens trained on (all ranks), from step 0
    metrics = {
        **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        # After a resume the trainer's train_loss and runtime cover only the resumed steps: the whole
        # run's mean of the logged losses and its time over every session are what a reader expects.
        "train_loss": _rounded(_mean_logged_loss(history)),
        "train_loss_this_session": _rounded(result.metrics.get("train_loss")),
        "global_step": trainer.state.global_step,
        "seconds": round(seconds, 2),
        "seconds_this_session": round(session_seconds, 2),
        "resumed_from": resume_from.name if resume_from else None,
        "final_train_loss": _rounded(last_value(history, "loss")),
        "final_eval_loss": _rounded(last_value(history, "eval_loss")),
        "tokens_per_second": round(tokens / seconds, 1) if tokens and seconds else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "backend": loaded.backend.name,
        "batch_plan": asdict(plan),
        "lora": lora_arguments(cfg, plan),
        "sft_arguments": args,
        # Steps Unsloth ran as several passes to stay within plan.token_budget.
        "token_budget_splits": getattr(trainer, "_unsloth_token_budget_splits", 0),
        "processes": processes,
        "wandb": wandb_note,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    adapter_dir = run.path("adapter")
    if is_main_process():
        with atomic_dir(adapter_dir) as tmp:
            loaded.model.save_pretrained(str(tmp))
            loaded.tokenizer.save_pretrained(str(tmp))
        write_json_atomic(run.path("log_history"), history)
        write_json_atomic(run.path("train_metrics"), metrics)
        run.write_manifest(cfg, "train", metrics=metrics)
    barrier()
    return TrainResult(adapter_dir, history, metrics)


ELAPSED_FILE = "r1helpers_elapsed.json"


def _elapsed_before(resume_from: Path | None) -> float:
    if resume_from is None or not (resume_from / ELAPSED_FILE).is_file():
        return 0.0
    return float(read_json(resume_from / ELAPSED_FILE).get("seconds", 0.0))


def _mean_logged_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [r["loss"] for r in history if "loss" in r]
    return sum(losses) / len(losses) if losses else None


def elapsed_in_checkpoints(earlier: float):
    """A TrainerCallback that writes the training time so far into each checkpoint, so a resumed run
    reports the whole run's time (transformers is imported here, not when this module loads)."""
    from transformers import TrainerCallback

    t0 = time.perf_counter()

    class ElapsedInCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if is_main_process() and folder.is_dir():
                write_json_atomic(folder / ELAPSED_FILE, {"seconds": earlier + time.perf_counter() - t0})

    return ElapsedInCheckpoints()


def _rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def load_result(run: Run) -> TrainResult:
    return TrainResult(run.path("adapter"), read_json(run.path("log_history")), read_json(run.path("train_metrics")))


def ensure_trained(cfg: Config, run: Run, prepared, force: bool = False, resume: bool | None = None) -> TrainResult:
    """The run folder's adapter when trained with these settings; otherwise train it, resuming an
    interrupted run unless train.resume=false (or resume=False) says start over.

    `cfg` is checked again first (validate), so a value assigned in a notebook cell is what trains,
    and a bad one fails naming its field before any model loads.
    """
    cfg = validate(cfg)

    def make() -> TrainResult:

        base = load_base_for(cfg)
        plan = plan_for(cfg, base, prepared)
        # Recomputation is set when the adapters are added: with_lora passes the plan's choice.
        return train(cfg, run, with_lora(cfg, base, plan), prepared, resume=resume, plan=plan)

    return run.reuse_or_build(cfg, "train", make, lambda: load_result(run), force=force, say=print0)


def _lengths(prepared) -> list[int] | None:
    return list(prepared.train["num_tokens"]) if "num_tokens" in prepared.train.column_names else None


def plan_for(cfg: Config, base: Loaded, prepared) -> BatchPlan:
    """The batch plan for this process, from the loaded weights' memory and the data's real lengths."""
    import torch

    on_gpu = torch.cuda.is_available() and base.device.type == "cuda"
    return plan_from_config(cfg, base.backend.name, gpu_memory_gib(), processes=world_size(),
                            lengths=_lengths(prepared), dims=base.model.config,
                            base_gib=torch.cuda.memory_allocated() / 2**30 if on_gpu else None)


def training_preview(cfg: Config, run: Run, prepared, processes: int = 1) -> dict[str, Any]:
    """What stage 03 will pass, before any model loads, when training in `processes` processes (one
    of them: its share of the batch): the backend, the batch plan, the add_lora settings and the
    SFTConfig arguments (under DDP each process adds r1helpers.core.ddp.trainer_kwargs()).

    The plan estimates the weights' memory from the model's shapes where train() measures it after
    loading, so on a GPU its token budget can differ a little from the recorded one; everything else
    is computed as train() computes it."""
    from transformers import AutoConfig

    from r1helpers.core.hardware import choose_backend
    from r1helpers.modeling.load import estimated_weights_gib
    from r1helpers.modeling.local import resolve_model_path

    cfg = validate(cfg)
    backend = choose_backend(cfg, processes=processes)
    gpu_gib = gpu_memory_gib()
    dims = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name), revision=cfg.model.revision)
    base_gib = estimated_weights_gib(dims, backend.load_in_4bit, backend.dtype) if gpu_gib else None
    plan = plan_from_config(cfg, backend.name, gpu_gib, processes=processes, lengths=_lengths(prepared),
                            dims=dims, base_gib=base_gib)
    mode, note = wandb_choice(cfg)
    args = sft_arguments_for(cfg, plan, run.path("checkpoints"), backend=backend.name, dtype=backend.dtype,
                             on_gpu=gpu_gib is not None, report_to=["wandb"] if mode else [],
                             has_eval=len(prepared.eval) > 0, run_name=run.root.name)
    return {"backend": backend.name, "backend_reason": backend.reason, "processes": processes, "plan": plan,
            "lora": lora_arguments(cfg, plan), "sft_arguments": args, "wandb": note,
            "expected_trainable_parameters": expected_lora_parameters(dims, cfg.lora.r, cfg.lora.target_modules)}


# ---- 01 / 04 generation --------------------------------------------------------------------------

def question_set(cfg: Config, prepared) -> list[dict[str, Any]]:
    """The recipe's example questions plus the first held-out questions, with references where known."""

    items = [{"id": f"example-{k}", "question": q, "reference_cot": None, "reference_answer": None}
             for k, q in enumerate(cfg.infer.example_questions)]
    return items + eval_questions(prepared, cfg.infer.num_eval_questions)


GENERATION_OTHER = {"baseline": "finetuned", "finetuned": "baseline"}


def generation_path(cfg: Config, run: Run | None = None, stage: str | None = None, *,
                    prompt_tokens: int = 512) -> GenerationPath:
    """The generation path (infer.path; auto: `inference.paths.choose_generation_path` on this GPU) and why,
    decided before any model loads, from the model's config and the GPU's memory.

    Both generation stages must decode alike: with infer.path=auto, `stage` ("baseline" or "finetuned")
    follows the path the other stage recorded when its generations are current in `run`. R1HELPERS_GPU_GIB
    caps this process's GPU memory first (as on a smaller GPU). `prompt_tokens`: the longest prompt, for
    the KV cache a row needs (512 when not known: the medical questions' prompts are ~100-300 tokens).
    """
    from r1helpers.core.hardware import detect_hardware
    from r1helpers.modeling.load import estimated_weights_gib
    from r1helpers.modeling.local import model_dims

    cfg = validate(cfg)
    cap = gpu_cap_gib()
    apply_gpu_cap(cap)
    hw = detect_hardware()
    on_gpu = hw.device == "cuda"
    other = GENERATION_OTHER.get(stage or "")
    if cfg.infer.path == "auto" and run is not None and other and run.is_current(cfg, other):
        rec = (run.read_manifest(other) or {}).get("generation")
        if rec and rec.get("generation_path") in PATHS and (rec.get("device") == "cuda") == on_gpu:
            return GenerationPath.from_record(rec, f"the path {other} took ({rec.get('reason', '')}), so that both "
                                              "models are generated with the same weights and decoding")
    bc = choose_backend(cfg, hw, try_import=False)
    dims = model_dims(cfg.model.name, cfg.model.revision)  # without importing transformers (Unsloth comes first)
    half = bc.dtype if bc.dtype in ("bfloat16", "float16") else "bfloat16"
    mem = gpu_memory(cap, exclude_own=True)  # the same choice before and after this process loads a model
    kw = dict(on_gpu=on_gpu, dtype=bc.dtype, load_in_4bit=bc.load_in_4bit,
              gpu_gib=mem.total_gib if mem else None, used_gib=mem.used_gib if mem else 0.0,
              weights_16bit_gib=estimated_weights_gib(dims, False, half),
              kv_gib_per_row=kv_cache_bytes_for(dims, 2) * (prompt_tokens + cfg.infer.max_new_tokens) / 2**30,
              rows=len(cfg.infer.example_questions) + cfg.infer.num_eval_questions
              + (cfg.compare.mcq_rows if cfg.compare.mcq_generate and cfg.compare.mcq_source else 0))
    path = choose_generation_path(cfg.infer.path, backend=bc.name, **kw)
    if path.path == "unsloth":
        ok, why = unsloth_importable()
        if not ok:
            path = choose_generation_path(cfg.infer.path, backend="transformers", passed_over=[f"unsloth: {why}"], **kw)
    return path


def generation_kwargs(cfg: Config, plan: GenerationPlan | None = None,
                      path: GenerationPath | None = None) -> dict[str, Any]:
    """The decoding settings of `inference.generate.generate` from cfg.infer (the same for base and fine-tuned),
    with the planned batch (`plan`; else infer.batch_size, 0: generate plans it) and the path's KV cache."""
    i = cfg.infer
    kwargs = dict(max_new_tokens=i.max_new_tokens, batch_size=plan.batch_size if plan else i.batch_size,
                  do_sample=i.do_sample, temperature=i.temperature, top_p=i.top_p, seed=i.seed, stream=i.stream)
    if path is not None and path.cache_implementation:
        kwargs["cache_implementation"] = path.cache_implementation
    return kwargs


def generation_plan(cfg: Config, loaded: Loaded, path: GenerationPath, questions: list[str]) -> GenerationPlan:
    """The batch: infer.batch_size when set, else planned from the GPU's memory now (weights loaded) and the
    model's KV cache at the longest prompt + infer.max_new_tokens (`inference.generate.plan_for_model`)."""
    on_gpu = loaded.device.type == "cuda"
    mem = gpu_memory(gpu_cap_gib()) if on_gpu else None
    plan = plan_for_model(loaded.model, loaded.tokenizer, questions, max_new_tokens=cfg.infer.max_new_tokens,
                          path=path.path, kv_slack_tokens=path.kv_slack_tokens,
                          gpu_gib=mem.total_gib if mem else None, used_gib=mem.used_gib if mem else 0.0)
    if cfg.infer.batch_size > 0:
        plan.batch_size = min(cfg.infer.batch_size, max(1, len(questions)))
        plan.reason = (f"infer.batch_size={cfg.infer.batch_size} as set (0 plans it from memory; the plan: "
                       f"{plan.reason})")
    return plan


def _matches(loaded: Loaded, path: GenerationPath) -> bool:
    b = loaded.backend
    return (b.name, b.load_in_4bit, b.dtype) == (path.backend, path.load_in_4bit, path.dtype)


def _failure(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _fallback(cfg: Config, path: GenerationPath, why: str, failed_at: str) -> GenerationPath | None:
    b = choose_backend(cfg, try_import=False)
    return fallback_path(path, why, failed_at=failed_at, backend=b.name, dtype=b.dtype, load_in_4bit=b.load_in_4bit)


def load_for_generation(cfg: Config, path: GenerationPath,
                        adapter_dir: Path | None = None) -> tuple[Loaded, GenerationPath]:
    """The base model (or base + the adapter in `adapter_dir`) loaded for `path` and switched to inference;
    a path whose loading fails falls back (`inference.paths.fallback_path`), the reason kept in the path.
    A model that is not there is missing for every path and raises, except for static_16bit: a cache may
    hold only the 4-bit checkpoint that Unsloth loads."""
    from r1helpers.modeling.load import ModelError, for_inference

    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no LoRA adapter there (adapter_config.json missing)")
    while True:
        try:
            if path.path == "unsloth":
                ok, why = unsloth_importable()
                if not ok:
                    raise RuntimeError(why)
            choice = path.backend_choice()
            loaded = load_finetuned_for(cfg, adapter_dir, choice) if adapter_dir else load_base_for(cfg, choice)
            loaded = for_inference(loaded)
            return loaded, path
        except Exception as e:
            if isinstance(e, (ModelError, OSError)) and path.path != "static_16bit":
                raise
            why = _failure(e)
            nxt = _fallback(cfg, path, why, "load")
            if nxt is None:
                raise
        # Out of the except block, so the failed attempt's tensors (held by its traceback) can be freed.
        print(f"generation path {path.path} did not load ({why[:200]}): trying {nxt.path}", flush=True)
        free_memory()
        path = nxt


def set_up_decoding(cfg: Config, loaded: Loaded, path: GenerationPath) -> dict[str, Any]:
    """What both generation stages do to the loaded model right before generating, so that the baseline and the
    fine-tuned model decode the same way however the notebook loaded them; returns what it set, for the manifest.

    - attention (`infer.attention`), for a model loaded with transformers: `grouped_decode` switches it to
      `r1helpers.inference.attention` (each key/value head read once a decoding step), `sdpa` back to
      transformers' own. Unsloth's path keeps its own attention.
    - on the static_16bit path, the LoRA weights in the weights' 16-bit type (`load.adapter_to_dtype`): peft
      holds them in float32, which ran the adapter's matmuls as float32 kernels in every decoding step.
    - on the static_16bit path with `infer.compile_layers_once`, each decoder layer marked so that the decoding
      step's compilation compiles one layer and reuses it (`inference.regions`); the mark is taken off otherwise.
    - on Unsloth's path, its CUDA-graph decoding with the KV cache sized up front (`infer.unsloth_decode_graphs`,
      `load.unsloth_decode_graphs`).
    """
    from r1helpers.inference.attention import NAME, use_grouped_decode
    from r1helpers.inference.regions import compile_layers_once
    from r1helpers.modeling.load import adapter_to_dtype, unsloth_decode_graphs

    inner = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    if path.backend == "transformers":
        if cfg.infer.attention == "grouped_decode":
            use_grouped_decode(loaded.model)
        elif getattr(inner.config, "_attn_implementation", None) == NAME:
            inner.set_attn_implementation("sdpa")
    cast = adapter_to_dtype(loaded.model, path.dtype) if path.path == "static_16bit" else 0
    once = compile_layers_once(loaded.model, on=cfg.infer.compile_layers_once and path.path == "static_16bit")
    graphs = unsloth_decode_graphs(cfg.infer.unsloth_decode_graphs) if path.path == "unsloth" else False
    lora = next((p.dtype for n, p in loaded.model.named_parameters() if "lora_" in n), None)
    return {"attention": getattr(inner.config, "_attn_implementation", None),
            "adapter_weights": str(lora).replace("torch.", "") if lora else None, "adapter_tensors_cast": cast,
            "layers_compiled_once": once, "unsloth_decode_graphs": graphs}


def generate_stage(cfg: Config, run: Run, stage: str, loaded: Loaded, prepared, path: GenerationPath | None = None,
                   reload=None) -> list[dict]:
    """Write `<stage>/generations.jsonl` ("baseline" or "finetuned"), one record per question, and its manifest
    (the path, the batch plan, tokens/s, peak GPU memory).

    `path`: how `loaded` was loaded (default: `generation_path`). A path that fails to generate falls back
    (`inference.paths.fallback_path`); `reload(path) -> (Loaded, GenerationPath)` loads the model for a
    fallback on other weights (without it, only a fallback on the same weights is possible).
    """
    items = question_set(cfg, prepared)
    mcq = mcq_rows(cfg) if cfg.compare.mcq_generate else None
    questions = [it["question"] for it in items] + [accuracy.mcq_question(r) for r in mcq or []]
    path = path or generation_path(cfg, run, stage)
    while True:
        plan = generation_plan(cfg, loaded, path, questions)
        print(f"{stage}: generation path {path.path} ({path.weights}): {path.reason}", flush=True)
        print(f"{stage}: batch {plan.batch_size} for {len(questions)} questions"
              + (f" ({len(items)} held-out, {len(mcq)} multiple-choice)" if mcq else "") + f": {plan.reason}",
              flush=True)
        decoding = set_up_decoding(cfg, loaded, path)
        stats: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            outputs = generate(loaded.model, loaded.tokenizer, questions, **generation_kwargs(cfg, plan, path),
                               stats=stats)
            # the KV cache Unsloth's generate() keeps on the layers, freed for the scoring that follows
            decoding["unsloth_decode_steps"] = release_decode_memory(loaded.model)
            break
        except Exception as e:
            why = _failure(e)
            nxt = _fallback(cfg, path, why, "generate")
            if nxt is None or (reload is None and not same_weights(path, nxt)):
                raise
        print(f"{stage}: generation path {path.path} failed ({why[:200]}): falling back to {nxt.path}", flush=True)
        free_memory()
        if not same_weights(path, nxt):
            loaded, nxt = reload(nxt)
        path = nxt
    seconds = time.perf_counter() - t0
    records = [{**it, **out, "model": stage} for it, out in zip(items, outputs)]
    write_jsonl_atomic(run.path(stage), records)
    must_exist = []
    if mcq:
        write_jsonl_atomic(run.path(f"{stage}_mcq"), mcq_generation_records(mcq, outputs[len(items):]))
        must_exist.append(str(run.path(f"{stage}_mcq")))
    new_tokens = sum(o["new_tokens"] for o in outputs)
    tps = round(new_tokens / max(seconds, 1e-9), 1)
    device = loaded.device.type
    print(f"{stage}: {new_tokens} tokens in {seconds:.1f} s ({tps} tokens/s); peak GPU memory reserved "
          f"{stats.get('peak_gpu_reserved_gib', 'n/a')} GiB (allocated {stats.get('peak_gpu_allocated_gib', 'n/a')})",
          flush=True)
    run.write_manifest(cfg, stage, questions=len(records), mcq_questions=len(mcq or []), seconds=round(seconds, 2),
                       generated_tokens=new_tokens, tokens_per_second=tps, backend=loaded.backend.name,
                       generation_path=path.path, batch_size=plan.batch_size,
                       peak_gpu_reserved_gib=stats.get("peak_gpu_reserved_gib"), must_exist=must_exist,
                       generation={**path.record(), **decoding, "device": device,
                                   "model_class": type(loaded.model).__name__,
                                   "plan": asdict(plan), "stats": stats, "gpu_gib_cap": gpu_cap_gib()})
    return records


def mcq_generation_records(rows: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a generation stage keeps of its answers to the multiple-choice questions: per question its id and
    the fields `accuracy.answer_mcq` adds when it generates (graded later, in the comparison)."""
    return [{"id": r["id"], **{k: o[k] for k in accuracy.GENERATED_FIELDS}} for r, o in zip(rows, outputs)]


def mcq_generations(cfg: Config, run: Run, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]] | None:
    """Both models' generated answers to `rows`, as stages 01 and 04 wrote them in their generation batches
    ({"base": [...], "tuned": [...]}, in the rows' order), or None when either stage's are not current
    (then the comparison generates them itself)."""
    out = {}
    for side, stage in (("base", "baseline"), ("tuned", "finetuned")):
        path = run.path(f"{stage}_mcq")
        if not (run.is_current(cfg, stage) and path.is_file()):
            return None
        by_id = {r["id"]: r for r in read_jsonl(path)}
        if any(r["id"] not in by_id for r in rows):
            return None
        out[side] = [by_id[r["id"]] for r in rows]
    return out


def zero_adapter(cfg: Config, loaded: Loaded, path: GenerationPath) -> tuple[Loaded, Any]:
    """On the static_16bit path, the base model wrapped in a LoRA adapter of cfg.lora's shape whose B is zero,
    and a function that takes it off again (the model passed in is restored in place).

    B = 0 makes every adapter's contribution exactly zero, so the outputs are the base model's bit for bit,
    while the decoding step has the same graph as the fine-tuned model's in stage 04: that one's compilation
    then comes from torch's compile cache, and both models run the same kernels. Elsewhere (no compilation)
    and on any failure, the model is returned as it is.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if path.path != "static_16bit" or isinstance(loaded.model, PeftModel):
        return loaded, lambda: None
    lc = cfg.lora
    try:
        wrapped = get_peft_model(loaded.model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                          bias=lc.bias, target_modules=list(lc.target_modules),
                                                          task_type="CAUSAL_LM"))
        wrapped.requires_grad_(False)
        wrapped.eval()
        if any(float(p.abs().max()) != 0.0 for n, p in wrapped.named_parameters() if "lora_B" in n):
            wrapped.unload()
            raise ValueError("lora_B was not initialised to zero")
    except Exception as e:
        print(f"baseline: generating without a zero adapter ({type(e).__name__}: {str(e)[:200]})", flush=True)
        return loaded, lambda: None
    return Loaded(wrapped, loaded.tokenizer, loaded.backend), wrapped.unload


def baseline(cfg: Config, run: Run, prepared, loaded: Loaded | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Generations of the base model (stage 01), reused when current.

    `loaded`: the base model already loaded for `generation_path(cfg, run, "baseline")` and switched to
    inference (`for_inference`); without it (or when it was loaded otherwise) the model is loaded here,
    only if the generations must be made. On the static_16bit path it generates through a zero LoRA
    adapter (`zero_adapter`: the base model's outputs exactly, the fine-tuned model's compiled graph),
    taken off again afterwards.
    """

    def make() -> list[dict[str, Any]]:
        path = generation_path(cfg, run, "baseline")
        model = loaded
        if model is not None and not _matches(model, path):
            print(f"baseline: the model passed in ({model.backend.name}, {model.backend.dtype}, 4-bit "
                  f"{model.backend.load_in_4bit}) is not what generation path {path.path} needs ({path.weights}, "
                  f"{path.backend}): loading that", flush=True)
            model = None
        if model is None:
            model, path = load_for_generation(cfg, path)
        model, take_off = zero_adapter(cfg, model, path)
        try:
            return generate_stage(cfg, run, "baseline", model, prepared, path,
                                  reload=lambda p: load_for_generation(cfg, p))
        finally:
            take_off()

    return run.reuse_or_build(cfg, "baseline", make, lambda: read_jsonl(run.path("baseline")), force=force)


class FinetunedModel:
    """Base + adapter, loaded on first use, then shared by stage 04's generation and its scoring.

    Nothing loads when the run folder's generations and comparison are both reused; otherwise
    the model loads once, for the generation path (`generation_path(cfg, run, "finetuned")`: the
    baseline's when current). `adapter_dir` None means the run's own adapter (trained first when
    missing or made with other settings). `loads` counts the loads, `release()` frees the memory.
    """

    def __init__(self, cfg: Config, run: Run, prepared, adapter_dir: Path | None = None):
        self.cfg, self.run, self.prepared = cfg, run, prepared
        self.own_adapter = adapter_dir is None
        self._adapter_dir = None if adapter_dir is None else Path(adapter_dir)
        self._trained: TrainResult | None = None
        self._loaded: Loaded | None = None
        self.path: GenerationPath | None = None
        self.loads = 0

    def _train(self) -> TrainResult:
        if self._trained is None:
            self._trained = ensure_trained(self.cfg, self.run, self.prepared)
        return self._trained

    @property
    def adapter_dir(self) -> Path:
        return self._adapter_dir if self._adapter_dir is not None else self._train().adapter_dir

    @property
    def log_history(self) -> list[dict[str, Any]]:
        """Training's loss records for the run's own adapter; none for another one."""
        return self._train().log_history if self.own_adapter else []

    def get(self) -> Loaded:
        if self._loaded is None:
            adapter = self.adapter_dir  # trains first when needed, before the path looks at the GPU's memory
            path = self.path or generation_path(self.cfg, self.run, "finetuned")
            self._loaded, self.path = load_for_generation(self.cfg, path, adapter)
            self.loads += 1
        return self._loaded

    def switch(self, path: GenerationPath) -> tuple[Loaded, GenerationPath]:
        """Load again for another generation path (a fallback); returns the model and the path it loaded for."""
        self.release()
        self.path = path
        return self.get(), self.path

    def release(self) -> None:
        """Drop the weights (GPU memory back to the allocator); a later get() loads again."""
        if self._loaded is None:
            return
        self._loaded.model = None
        self._loaded = None
        free_memory()


def finetuned(cfg: Config, run: Run, prepared, force: bool = False,
              loaded: FinetunedModel | None = None) -> list[dict[str, Any]]:
    """Generations of base + adapter (stage 04); trains first if the adapter is missing or stale.

    Pass `loaded` (a FinetunedModel) to share one loaded model with `compare`. The generation path is
    the baseline's when its generations are current, so both models decode alike.
    """
    model = loaded if loaded is not None else FinetunedModel(cfg, run, prepared)

    def make() -> list[dict[str, Any]]:
        lm = model.get()
        return generate_stage(cfg, run, "finetuned", lm, prepared, model.path, reload=model.switch)

    return run.reuse_or_build(cfg, "finetuned", make, lambda: read_jsonl(run.path("finetuned")), force=force)


# ---- 04 comparison ------------------------------------------------------------------------------

def nll_rows(cfg: Config, prepared) -> list[dict[str, Any]]:
    """The held-out rows scored teacher-forced: the first compare.nll_rows (0: all)."""
    n = len(prepared.eval) if cfg.compare.nll_rows == 0 else min(cfg.compare.nll_rows, len(prepared.eval))
    return [dict(r) for r in prepared.eval.select(range(n))]


def decoding_used(run: Run) -> dict[str, dict[str, Any] | None]:
    """The infer settings each generation stage recorded in its manifest, with its generation path and
    weights (None: not generated yet)."""
    out = {}
    for stage in ("baseline", "finetuned"):
        manifest = run.read_manifest(stage)
        if manifest is None or manifest["settings"].get("infer") is None:
            out[stage] = None
            continue
        gen = manifest.get("generation") or {}
        out[stage] = {**manifest["settings"]["infer"], "generation_path": manifest.get("generation_path"),
                      "weights": gen.get("weights"), "attention": gen.get("attention")}
    return out


def check_same_decoding(run: Run) -> None:
    """Both generation stages must have used one decoding setup and one generation path (same weights,
    same KV cache), or the comparison is not fair."""
    used = decoding_used(run)
    if any(v is None for v in used.values()):
        return
    path_keys = ("generation_path", "weights", "attention")
    b, f = used["baseline"], used["finetuned"]
    if {k: v for k, v in b.items() if k not in path_keys} != {k: v for k, v in f.items() if k not in path_keys}:
        raise ValueError("baseline and fine-tuned generations used different infer settings; rerun stages 01 and 04")
    if [b[k] for k in path_keys] != [f[k] for k in path_keys]:
        raise ValueError(
            f"baseline and fine-tuned generations took different generation paths (baseline: {b['generation_path']}, "
            f"{b['weights']}, attention {b['attention']}; fine-tuned: {f['generation_path']}, {f['weights']}, "
            f"attention {f['attention']}), so their decoding differs; set infer.path to one path and rerun stages "
            "01 and 04")


def comparison_settings(cfg: Config) -> dict[str, Any]:
    """What the comparison records about how it was made (build_comparison adds counts and bootstrap)."""
    i = cfg.infer
    decoding = {"do_sample": i.do_sample, "max_new_tokens": i.max_new_tokens, "seed": i.seed}
    if i.do_sample:
        decoding.update(temperature=i.temperature, top_p=i.top_p)
    c = cfg.compare
    mcq: dict[str, Any] = {"source": c.mcq_source}
    if c.mcq_source is None:
        mcq["reason"] = "compare.mcq_source is null"
    else:
        mcq.update(split=c.mcq_split, rows=c.mcq_rows, generate=c.mcq_generate,
                   likelihood="mean log-probability per token of each option's text after the prompt")
    return {"model": cfg.model.name, "profile": cfg.profile, "max_seq_length": cfg.model.max_seq_length,
            "decoding": decoding, "embedding_model": c.embedding_model, "mcq": mcq}


def mcq_rows(cfg: Config) -> list[dict[str, Any]] | None:
    """The multiple-choice questions of compare.mcq_source (the first compare.mcq_rows; 0: all), or None."""
    c = cfg.compare
    if c.mcq_source is None:
        return None
    try:
        return accuracy.load_mcq_rows(c.mcq_source, split=c.mcq_split, limit=c.mcq_rows or None)
    except ValueError:
        raise  # names the file, the row and the field
    except Exception as e:  # the Hub unreachable, a wrong id or split
        raise RuntimeError(f"compare.mcq_source={c.mcq_source!r} (split {c.mcq_split!r}) could not be loaded "
                           f"({type(e).__name__}: {str(e)[:300]}); set compare.mcq_source to a local file, to "
                           "r1helpers/sample-mcq, or to null (correctness is then not measured)") from e


def mcq_preview(cfg: Config) -> dict[str, Any]:
    """What stage 04 passes to the accuracy helpers: the set, how many questions, the decoding of the
    generated answers (None: likelihood only) and the first question's prompt exactly as the model sees it."""
    from r1helpers.core import prompts

    rows = mcq_rows(cfg)
    c = cfg.compare
    return {"source": c.mcq_source, "split": c.mcq_split, "questions": len(rows) if rows else 0,
            "scored by": ("not measured" if rows is None else "option likelihood"
                          + (" and stated letter" if c.mcq_generate else "")),
            "decoding": mcq_decoding(cfg),
            "first prompt": prompts.build_prompt(accuracy.mcq_question(rows[0])) if rows else None}


def mcq_decoding(cfg: Config) -> dict[str, Any] | None:
    """The decoding of the multiple-choice generations: the held-out generations' (never streamed), or None
    when compare.mcq_generate is false."""
    if not cfg.compare.mcq_generate:
        return None
    return {k: v for k, v in generation_kwargs(cfg).items() if k != "stream"}


def compare(cfg: Config, run: Run, prepared, baseline: list[dict], tuned: list[dict],
            force: bool = False, adapter_dir: Path | None = None,
            loaded: FinetunedModel | None = None) -> dict[str, Any]:
    """Score both models on the held-out split; write compare/comparison.json and compare/report.html.

    Reuses the saved comparison when made with these settings. `loaded` (the FinetunedModel that
    `finetuned` used) avoids a second load; it is released after scoring. `adapter_dir` scores
    another adapter than the run's own (then nothing is marked current in the run folder).
    """
    if adapter_dir is not None:
        return _compare(cfg, run, prepared, baseline, tuned, FinetunedModel(cfg, run, prepared, adapter_dir))
    model = loaded if loaded is not None else FinetunedModel(cfg, run, prepared)
    return run.reuse_or_build(cfg, "compare", lambda: _compare(cfg, run, prepared, baseline, tuned, model),
                              lambda: read_json(run.path("comparison")), force=force)


def _compare(cfg: Config, run: Run, prepared, baseline: list[dict], tuned: list[dict],
             model: FinetunedModel) -> dict[str, Any]:
    check_same_decoding(run)
    pair_generations(baseline, tuned)  # refuse mismatched question sets before any model loads
    mcq = mcq_rows(cfg)  # a bad source or row fails here, before any model loads
    lm = model.get()
    tok, backend = lm.tokenizer, lm.backend.name
    nll = teacher_forced(lm.model, tok, nll_rows(cfg, prepared), cfg.model.max_seq_length)
    # Both sides from the one loaded model: the adapter disabled is the base model, as for the NLL. The generated
    # answers come from stages 01 and 04, which answered these questions in their generation batches.
    generated = mcq_generations(cfg, run, mcq) if mcq is not None and cfg.compare.mcq_generate and model.own_adapter \
        else None
    answers = None if mcq is None else accuracy.answer_mcq_before_after(
        lm.model, tok, mcq, decoding=None if generated else mcq_decoding(cfg))
    if generated:
        answers = {side: accuracy.attach_generations(answers[side], generated[side]) for side in answers}
    del lm
    model.release()  # nothing below needs the model; the embedder runs on the CPU
    notes = [f"adapter: {model.adapter_dir}", f"backend: {backend}"]
    if mcq is not None:
        notes.append(f"multiple-choice: {len(mcq)} questions of {cfg.compare.mcq_source}, scored by option "
                     "likelihood" + (" and by the letter stated in a generated answer" if cfg.compare.mcq_generate
                                     else " only (compare.mcq_generate is false)"))
    sims, note = _similarities(cfg, baseline, tuned)
    notes.append(note)
    c = cfg.compare
    result = build_comparison(
        nll, baseline, tuned, lambda s: len(tok(s, add_special_tokens=False)["input_ids"]),
        primary_metric=c.primary_metric, bootstrap_samples=c.bootstrap_samples, seed=c.seed,
        settings=comparison_settings(cfg), sims=sims, notes=notes, log_history=model.log_history,
        mcq_rows=mcq, mcq_answers=answers)
    write_outputs(result, run.stage_dir("compare"))
    if model.own_adapter:
        run.write_manifest(cfg, "compare", verdict=result["verdict"], headline=result["headline"])
    return result


def _similarities(cfg: Config, baseline: list[dict], tuned: list[dict]) -> tuple[dict[str, list[float]] | None, str]:
    embedder, note = load_embedder(cfg.compare.embedding_model)
    return answer_similarities(embedder, baseline, tuned), note


def report_path(run: Run) -> Path:
    return run.path("report")
