"""Each stage as the run folder sees it: reuse what was made with these settings, else build it.

The helpers below this layer (r1helpers.data, .modeling, .training, .inference,
.evaluate, .export) take plain objects; these functions take the config tree and
the run folder, decide what is current, and record manifests.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1helpers.core import prompts
from r1helpers.core.config import Config, apply_overrides
from r1helpers.core.ddp import barrier, is_main_process, per_process, print0, world_size
from r1helpers.core.hardware import is_oom
from r1helpers.core.runs import (Run, atomic_dir, read_json, read_jsonl, stage_fingerprint, write_json_atomic,
                                 write_jsonl_atomic, write_text_atomic)
from r1helpers.data import DataError, Report, length_stats, load_raw, select_rows, tokenize_rows
from r1helpers.evaluate.compare import (answer_similarities, build_comparison, load_embedder, pair_generations,
                                        teacher_forced, write_outputs)
from r1helpers.inference.generate import generate
from r1helpers.modeling.load import Loaded, trainable_parameters
from r1helpers.training.sft import (BatchPlan, gpu_memory_gib, latest_checkpoint, plan_batches, sft_config,
                                    token_budget_env, wandb_reachable)
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
    """Load, check, split and tokenize; returns a DatasetDict and the statistics."""
    import datasets

    report = Report(overlong_action=cfg.data.overlong)
    ds, origin = load_raw(cfg.data, report)
    train_rows, eval_rows = select_rows(ds, cfg.data, origin, report)
    # Lengths before any drop, so the histogram shows what max_seq_length cuts off.
    max_len = cfg.model.max_seq_length
    all_lengths = {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        all_lengths[split] = [len(prompts.encode_example(tokenizer, r["Question"], r["Complex_CoT"], r["Response"])[0]) for r in rows]
    train = tokenize_rows(train_rows, tokenizer, max_len, cfg.data.overlong, "train", report)
    held = tokenize_rows(eval_rows, tokenizer, max_len, cfg.data.overlong, "eval", report)
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
    """The run folder's prepared splits when made with these settings, else rebuilt (stage 02)."""
    import datasets

    def load() -> Prepared:
        dd = datasets.load_from_disk(str(run.path("dataset")))
        return Prepared(dd["train"], dd["eval"], read_json(run.path("data_stats")), run.stage_dir("data"))

    def make() -> Prepared:
        from r1helpers.modeling.load import load_tokenizer

        dd, stats = build(cfg, tokenizer if tokenizer is not None else load_tokenizer(cfg))
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


def train(cfg: Config, run: Run, loaded: Loaded, prepared, resume: bool | None = None,
          plan: BatchPlan | None = None) -> TrainResult:
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
    plan = plan or plan_batches(per_process(cfg, processes), loaded.backend.name, gpu_memory_gib())
    across = f" x {processes} processes" if processes > 1 else ""
    print0(f"batches: micro-batch {plan.micro_batch} x accumulation {plan.accumulation}{across}, "
           f"padding-free {plan.padding_free} ({plan.reason})")
    args = sft_config(cfg, loaded, ckpt_dir, report_to, has_eval, plan)
    loaded.model.config.use_cache = False
    with token_budget_env(plan):
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
        # Steps Unsloth ran as several passes to stay within plan.token_budget.
        "token_budget_splits": getattr(trainer, "_unsloth_token_budget_splits", 0),
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
    return TrainResult(run.path("adapter"), read_json(run.path("log_history")), read_json(run.path("train_metrics")))


def ensure_trained(cfg: Config, run: Run, prepared, force: bool = False, resume: bool | None = None) -> TrainResult:
    """The run folder's adapter when trained with these settings; otherwise train it, resuming an
    interrupted run unless train.resume=false (or resume=False) says start over."""

    def make() -> TrainResult:
        from r1helpers.modeling.load import add_lora, load_base

        base = load_base(cfg)
        plan = plan_for(cfg, base, prepared)
        lora_cfg = cfg
        if plan.gradient_checkpointing is not None:  # recomputation is set when the adapters are added
            lora_cfg = apply_overrides(cfg, {"lora.gradient_checkpointing": plan.gradient_checkpointing})
        return train(cfg, run, add_lora(base, lora_cfg), prepared, resume=resume, plan=plan)

    return run.reuse_or_build(cfg, "train", make, lambda: load_result(run), force=force, say=print0)


def plan_for(cfg: Config, base: Loaded, prepared) -> BatchPlan:
    """The batch plan for this process, from the loaded weights' memory and the data's real lengths."""
    import torch

    on_gpu = torch.cuda.is_available() and base.device.type == "cuda"
    return plan_batches(
        per_process(cfg, world_size()), base.backend.name, gpu_memory_gib(),
        lengths=list(prepared.train["num_tokens"]) if "num_tokens" in prepared.train.column_names else None,
        dims=base.model.config, base_gib=torch.cuda.memory_allocated() / 2**30 if on_gpu else None,
        processes=world_size(),
    )


# ---- 01 / 04 generation --------------------------------------------------------------------------

def question_set(cfg: Config, prepared) -> list[dict[str, Any]]:
    """The recipe's example questions plus the first held-out questions, with references where known."""

    items = [{"id": f"example-{k}", "question": q, "reference_cot": None, "reference_answer": None}
             for k, q in enumerate(cfg.infer.example_questions)]
    return items + eval_questions(prepared, cfg.infer.num_eval_questions)


def generate_stage(cfg: Config, run: Run, stage: str, loaded: Loaded, prepared) -> list[dict]:
    """Write `<stage>/generations.jsonl` ("baseline" or "finetuned"), one record per question."""
    items = question_set(cfg, prepared)
    t0 = time.perf_counter()
    outputs = generate(loaded, [it["question"] for it in items], cfg)
    seconds = time.perf_counter() - t0
    records = [{**it, **out, "model": stage} for it, out in zip(items, outputs)]
    write_jsonl_atomic(run.path(stage), records)
    new_tokens = sum(r["new_tokens"] for r in records)
    run.write_manifest(cfg, stage, questions=len(records), seconds=round(seconds, 2),
                       generated_tokens=new_tokens, tokens_per_second=round(new_tokens / max(seconds, 1e-9), 1),
                       backend=loaded.backend.name)
    return records


def baseline(cfg: Config, run: Run, prepared, force: bool = False) -> list[dict[str, Any]]:
    """Generations of the base model (stage 01), reused when current."""

    def make() -> list[dict[str, Any]]:
        from r1helpers.modeling.load import for_inference, load_base

        return generate_stage(cfg, run, "baseline", for_inference(load_base(cfg)), prepared)

    return run.reuse_or_build(cfg, "baseline", make, lambda: read_jsonl(run.path("baseline")), force=force)


class FinetunedModel:
    """Base + adapter, loaded on first use, then shared by stage 04's generation and its scoring.

    Nothing loads when the run folder's generations and comparison are both reused; otherwise
    the model loads once. `adapter_dir` None means the run's own adapter (trained first when
    missing or made with other settings). `loads` counts the loads, `release()` frees the memory.
    """

    def __init__(self, cfg: Config, run: Run, prepared, adapter_dir: Path | None = None):
        self.cfg, self.run, self.prepared = cfg, run, prepared
        self.own_adapter = adapter_dir is None
        self._adapter_dir = None if adapter_dir is None else Path(adapter_dir)
        self._trained: TrainResult | None = None
        self._loaded: Loaded | None = None
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
            from r1helpers.modeling.load import for_inference, load_finetuned

            self._loaded = for_inference(load_finetuned(self.cfg, self.adapter_dir))
            self.loads += 1
        return self._loaded

    def release(self) -> None:
        """Drop the weights (GPU memory back to the allocator); a later get() loads again."""
        if self._loaded is None:
            return
        import torch

        self._loaded.model = None
        self._loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def finetuned(cfg: Config, run: Run, prepared, force: bool = False,
              loaded: FinetunedModel | None = None) -> list[dict[str, Any]]:
    """Generations of base + adapter (stage 04); trains first if the adapter is missing or stale.

    Pass `loaded` (a FinetunedModel) to share one loaded model with `compare`.
    """
    model = loaded if loaded is not None else FinetunedModel(cfg, run, prepared)
    return run.reuse_or_build(cfg, "finetuned", lambda: generate_stage(cfg, run, "finetuned", model.get(), prepared),
                              lambda: read_jsonl(run.path("finetuned")), force=force)


# ---- 04 comparison ------------------------------------------------------------------------------

def nll_rows(cfg: Config, prepared) -> list[dict[str, Any]]:
    """The held-out rows scored teacher-forced: the first compare.nll_rows (0: all)."""
    n = len(prepared.eval) if cfg.compare.nll_rows == 0 else min(cfg.compare.nll_rows, len(prepared.eval))
    return [dict(r) for r in prepared.eval.select(range(n))]


def decoding_used(run: Run) -> dict[str, dict[str, Any] | None]:
    """The infer settings each generation stage recorded in its manifest (None: not generated yet)."""
    out = {}
    for stage in ("baseline", "finetuned"):
        manifest = run.read_manifest(stage)
        out[stage] = manifest["settings"].get("infer") if manifest else None
    return out


def check_same_decoding(run: Run) -> None:
    """Both generation stages must have used one decoding setup, or the comparison is not fair."""
    used = decoding_used(run)
    if all(v is not None for v in used.values()) and used["baseline"] != used["finetuned"]:
        raise ValueError("baseline and fine-tuned generations used different infer settings; rerun stages 01 and 04")


def comparison_settings(cfg: Config) -> dict[str, Any]:
    """What the comparison records about how it was made (build_comparison adds counts and bootstrap)."""
    i = cfg.infer
    decoding = {"do_sample": i.do_sample, "max_new_tokens": i.max_new_tokens, "seed": i.seed}
    if i.do_sample:
        decoding.update(temperature=i.temperature, top_p=i.top_p)
    return {"model": cfg.model.name, "profile": cfg.profile, "max_seq_length": cfg.model.max_seq_length,
            "decoding": decoding, "embedding_model": cfg.compare.embedding_model}


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
    lm = model.get()
    tok, backend = lm.tokenizer, lm.backend.name
    nll = teacher_forced(lm.model, tok, nll_rows(cfg, prepared), cfg.model.max_seq_length)
    del lm
    model.release()  # nothing below needs the model; the embedder runs on the CPU
    notes = [f"adapter: {model.adapter_dir}", f"backend: {backend}"]
    sims, note = _similarities(cfg, baseline, tuned)
    notes.append(note)
    c = cfg.compare
    result = build_comparison(
        nll, baseline, tuned, lambda s: len(tok(s, add_special_tokens=False)["input_ids"]),
        primary_metric=c.primary_metric, bootstrap_samples=c.bootstrap_samples, seed=c.seed,
        settings=comparison_settings(cfg), sims=sims, notes=notes, log_history=model.log_history)
    write_outputs(result, run.stage_dir("compare"))
    if model.own_adapter:
        run.write_manifest(cfg, "compare", verdict=result["verdict"], headline=result["headline"])
    return result


def _similarities(cfg: Config, baseline: list[dict], tuned: list[dict]) -> tuple[dict[str, list[float]] | None, str]:
    embedder, note = load_embedder(cfg.compare.embedding_model)
    return answer_similarities(embedder, baseline, tuned), note


def report_path(run: Run) -> Path:
    return run.path("report")
