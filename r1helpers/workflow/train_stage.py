"""Stage 03 in the run folder: reuse, resume or train (`begin` -> TrainingJob), the adapter saved atomically."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config, validate
from r1helpers.core.ddp import barrier, is_main_process, per_process, print0, trainer_kwargs, world_size
from r1helpers.core.hardware import headless, is_oom
from r1helpers.core.runs import (Run, RunFolderConflict, atomic_dir, differing_fields, read_json, stage_fingerprint,
                                 stage_settings, write_json_atomic, write_text_atomic)
from r1helpers.inference.choose import load_base_for
from r1helpers.modeling.load import Loaded, trainable_parameters
from r1helpers.training.plan import BatchPlan, gpu_memory_gib, plan_batches
from r1helpers.training.sft import last_value, latest_checkpoint, make_trainer, sft_arguments
from r1helpers.workflow.tracking import wandb_setup


def _checkpoint_dir(cfg: Config, run: Run, resume: bool) -> tuple[Path, Path | None]:
    """Rank 0 keeps the checkpoints or moves them aside (to <run>/replaced/, never deleted); checkpoints made with
    other settings are refused unless the run folder was opened with overwrite. Every rank resumes alike."""
    ckpt = run.path("checkpoints")
    stamp, recorded = ckpt / "fingerprint.txt", ckpt / "settings.json"
    fp = stage_fingerprint(cfg, "train")
    if is_main_process():
        has_work = ckpt.exists() and any(ckpt.glob("checkpoint-*"))
        other = has_work and (not stamp.is_file() or stamp.read_text().strip() != fp)
        if other and not run.overwrite:
            old = read_json(recorded) if recorded.is_file() else {}
            changed = differing_fields(old, stage_settings(cfg, "train")) if old else ["unknown"]
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
    return ckpt, latest_checkpoint(ckpt, say=print0) if resume else None


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


class TrainingJob:
    """Stage 03 between the cells that train. `begin` decides, holding the run folder's lock: reuse, resume from
    the latest complete checkpoint, train from step 0, or ddp (torchrun trains); `save` records the adapter and
    releases the lock."""

    def __init__(self, cfg: Config, run: Run, prepared, mode: str, resume_from: Path | None = None,
                 checkpoint_dir: Path | None = None, report_to: list[str] | None = None, wandb_note: str = "",
                 release=None):
        from r1helpers.core.hardware import choose_backend

        self.cfg, self.run, self.prepared, self.mode = cfg, run, prepared, mode
        self.checkpoint, self.checkpoint_dir = resume_from, checkpoint_dir
        self.report_to, self.wandb_note = report_to or [], wandb_note
        self.backend = choose_backend(cfg)
        self._release = release or (lambda: None)
        self._t0, self._earlier = None, 0.0

    @property
    def resume_from(self) -> str | None:
        """The checkpoint as `trainer.train(resume_from_checkpoint=...)` takes it; None: from step 0."""
        return str(self.checkpoint) if self.checkpoint else None

    @property
    def trains_here(self) -> bool:
        """True when this process trains: not when the adapter is reused, nor when torchrun trains (DDP)."""
        return self.mode in ("train", "resume")

    def __str__(self) -> str:
        return {"reuse": f"train: reusing {self.run.path('adapter')} (trained with these settings)",
                "ddp": f"train: under DDP in {self.cfg.train.processes or 'all'} processes (torchrun), below",
                "resume": f"train: resuming from {self.resume_from} ({self.wandb_note})",
                "train": f"train: from step 0 ({self.wandb_note})"}[self.mode]

    @property
    def eval_dataset(self):
        """The held-out rows' token ids for the held-out loss, or None (no held-out rows, train.eval_steps 0)."""
        p = self.prepared
        return p.trainer_columns("eval") if len(p.eval) > 0 and self.cfg.train.eval_steps > 0 else None

    def batch_plan(self, model) -> BatchPlan:
        """This GPU's micro-batch x accumulation, from the loaded weights' memory and the rows' lengths."""
        return plan_for(self.cfg, Loaded(model, None, self.backend), self.prepared)

    def gradient_checkpointing(self, plan: BatchPlan):
        """`use_gradient_checkpointing` for get_peft_model: the plan's choice, else lora.gradient_checkpointing."""
        return {"unsloth": "unsloth", "true": True, "false": False}[plan.checkpointing(self.cfg.lora.gradient_checkpointing)]

    def sft_arguments(self, plan: BatchPlan) -> dict[str, Any]:
        """The exact SFTConfig keyword arguments: cfg.train's values, the plan, the run folder's checkpoints."""
        import torch

        return sft_arguments_for(self.cfg, plan, self.checkpoint_dir, backend=self.backend.name,
                                 dtype=self.backend.dtype, on_gpu=torch.cuda.is_available(),
                                 report_to=self.report_to, has_eval=len(self.prepared.eval) > 0,
                                 run_name=self.run.root.name)

    @contextlib.contextmanager
    def session(self, trainer, plan: BatchPlan):
        """Around `trainer.train(...)`: earlier sessions' time carried on, out of memory turned into advice, W&B
        closed however it ends."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._earlier = _elapsed_before(self.checkpoint)
        trainer.add_callback(elapsed_in_checkpoints(self._earlier))
        self._t0 = time.perf_counter()
        try:
            yield
        except RuntimeError as e:
            if not is_oom(e):
                raise
            raise RuntimeError(oom_advice(self.cfg, plan)) from e
        finally:
            self._session_seconds = time.perf_counter() - self._t0
            if "wandb" in self.report_to:
                import wandb

                wandb.finish()

    def save(self, trainer, model, tokenizer, plan: BatchPlan, output) -> TrainResult:
        """The adapter and tokenizer saved (a temporary folder, renamed), the log, metrics and manifest; unlocks."""
        import torch

        seconds = self._earlier + self._session_seconds
        trainable, total = trainable_parameters(model)
        history = trainer.state.log_history
        tokens = last_value(history, "num_tokens")  # TRL counts the tokens trained on (all ranks), from step 0
        metrics = {
            **{k: v for k, v in output.metrics.items() if isinstance(v, (int, float))},
            # After a resume the trainer's own values cover only the resumed steps.
            "train_loss": _rounded(_mean_logged_loss(history)),
            "train_loss_this_session": _rounded(output.metrics.get("train_loss")),
            "global_step": trainer.state.global_step,
            "seconds": round(seconds, 2),
            "seconds_this_session": round(self._session_seconds, 2),
            "resumed_from": self.checkpoint.name if self.checkpoint else None,
            "final_train_loss": _rounded(last_value(history, "loss")),
            "final_eval_loss": _rounded(last_value(history, "eval_loss")),
            "tokens_per_second": round(tokens / seconds, 1) if tokens and seconds else None,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "backend": self.backend.name,
            "batch_plan": asdict(plan),
            "lora": lora_arguments(self.cfg, plan),
            "sft_arguments": self.sft_arguments(plan),
            # Steps Unsloth ran as several passes to stay within plan.token_budget.
            "token_budget_splits": getattr(trainer, "_unsloth_token_budget_splits", 0),
            "processes": world_size(),
            "wandb": self.wandb_note,
            "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                    if torch.cuda.is_available() else None),
        }
        adapter_dir = self.run.path("adapter")
        try:
            if is_main_process():
                with atomic_dir(adapter_dir) as tmp:
                    model.save_pretrained(str(tmp))
                    tokenizer.save_pretrained(str(tmp))
                write_json_atomic(self.run.path("log_history"), history)
                write_json_atomic(self.run.path("train_metrics"), metrics)
                self.run.write_manifest(self.cfg, "train", metrics=metrics)
            barrier()
        finally:
            self._release()
        return TrainResult(adapter_dir, history, metrics)


def begin(cfg: Config, run: Run, prepared, processes: int = 1, resume: bool | None = None,
          announce: bool = True) -> TrainingJob:
    """What stage 03 does in this run folder (see TrainingJob); `resume=False` (or train.resume) starts over.
    `cfg` is checked again first: a value set in a cell is what trains."""
    cfg = validate(cfg)
    if processes > 1 and world_size() == 1:
        return TrainingJob(cfg, run, prepared, "ddp")
    lock = contextlib.ExitStack()
    lock.enter_context(run.lock("train"))
    try:
        if run.is_current(cfg, "train"):
            lock.close()
            return TrainingJob(cfg, run, prepared, "reuse")
        run.refuse_or_move_aside(cfg, "train")
        if announce:
            print0(run.why_stale(cfg, "train") + ": training")
        ckpt_dir, resume_from = _checkpoint_dir(cfg, run, cfg.train.resume if resume is None else resume)
        report_to, note = wandb_setup(cfg, run)
    except BaseException:
        lock.close()
        raise
    return TrainingJob(cfg, run, prepared, "resume" if resume_from else "train", resume_from, ckpt_dir,
                       report_to, note, release=lock.close)


def train(cfg: Config, run: Run, loaded: Loaded, prepared, resume: bool | None = None,
          plan: BatchPlan | None = None) -> TrainResult:
    """Notebook 03's training cells as one function, for DDP's workers and the tests: fine-tune `loaded` (a peft
    model from `with_lora`) and save it (TrainingJob.save)."""
    job = begin(cfg, run, prepared, resume=resume, announce=False)
    job.backend = loaded.backend
    print0(job.wandb_note)
    if job.checkpoint:
        print0(f"resuming from {job.checkpoint.name}")
    processes = world_size()
    plan = plan or plan_from_config(cfg, loaded.backend.name, gpu_memory_gib(), processes=processes)
    across = f" x {processes} processes" if processes > 1 else ""
    print0(f"batches: micro-batch {plan.micro_batch} x accumulation {plan.accumulation}{across}, "
           f"padding-free {plan.padding_free} ({plan.reason})")
    trainer = make_trainer(loaded.model, loaded.tokenizer, prepared.trainer_columns("train"), job.eval_dataset,
                           job.sft_arguments(plan), token_budget=plan.token_budget)
    with job.session(trainer, plan):
        output = trainer.train(resume_from_checkpoint=job.resume_from)
    return job.save(trainer, loaded.model, loaded.tokenizer, plan, output)


ELAPSED_FILE = "r1helpers_elapsed.json"


def _elapsed_before(resume_from: Path | None) -> float:
    if resume_from is None or not (resume_from / ELAPSED_FILE).is_file():
        return 0.0
    return float(read_json(resume_from / ELAPSED_FILE).get("seconds", 0.0))


def _mean_logged_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [r["loss"] for r in history if "loss" in r]
    return sum(losses) / len(losses) if losses else None


def elapsed_in_checkpoints(earlier: float):
    """A TrainerCallback writing the training time so far into each checkpoint: a resumed run reports the whole."""
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
    """The run folder's adapter when trained with these settings; otherwise train it (resuming unless
    train.resume=false). `cfg` is checked again first, so a value set in a notebook cell is what trains."""
    cfg = validate(cfg)

    def make() -> TrainResult:
        base = load_base_for(cfg)
        plan = plan_for(cfg, base, prepared)
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
