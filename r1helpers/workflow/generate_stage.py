"""Stages 01 and 04's generations as the run folder sees them: the question set, one batched generate call
with its path and plan, the records and manifest; reused when made with these settings."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.hardware import free_memory
from r1helpers.core.runs import Run, read_jsonl, write_jsonl_atomic
from r1helpers.evaluate import accuracy, contamination
from r1helpers.inference.choose import (
    GenerationPath,
    generation_kwargs,
    generation_path,
    generation_plan,
    gpu_cap_gib,
    load_for_generation,
    matches,
    set_up_decoding,
)
from r1helpers.inference.generate import generate
from r1helpers.modeling.load import Loaded, release_decode_memory
from r1helpers.workflow.data_stage import eval_questions
from r1helpers.workflow.train_stage import TrainResult, ensure_trained


def question_set(cfg: Config, prepared) -> list[dict[str, Any]]:
    """The recipe's example questions plus the first held-out questions, with references where known."""
    items = [{"id": f"example-{k}", "question": q, "reference_cot": None, "reference_answer": None}
             for k, q in enumerate(cfg.infer.example_questions)]
    return items + eval_questions(prepared, cfg.infer.num_eval_questions)


def generate_stage(cfg: Config, run: Run, stage: str, loaded: Loaded, prepared,
                   path: GenerationPath | None = None) -> list[dict]:
    """Write `<stage>/generations.jsonl` ("baseline" or "finetuned"), one record per question, the multiple-choice
    answers, and the manifest (the path, the batch plan, tokens/s, peak GPU memory). `path`: how `loaded` was
    loaded (default: `generation_path`)."""
    items = question_set(cfg, prepared)
    mcq = mcq_generation_rows(cfg, prepared) if cfg.compare.mcq_generate else None
    questions = [it["question"] for it in items] + [accuracy.mcq_question(r) for r in mcq or []]
    path = path or generation_path(cfg, run, stage)
    plan = generation_plan(cfg, loaded, path, questions)
    print(f"{stage}: generation path {path.path} ({path.weights}): {path.reason}", flush=True)
    print(f"{stage}: batch {plan.batch_size} for {len(questions)} questions"
          + (f" ({len(items)} held-out, {len(mcq)} multiple-choice)" if mcq else "") + f": {plan.reason}", flush=True)
    decoding = set_up_decoding(cfg, path)
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    outputs = generate(loaded.model, loaded.tokenizer, questions, **generation_kwargs(cfg, plan), stats=stats)
    seconds = time.perf_counter() - t0
    # the KV cache Unsloth's generate() keeps on the layers, freed for the scoring that follows
    decoding["unsloth_decode_steps"] = release_decode_memory(loaded.model)
    records = [{**it, **out, "model": stage} for it, out in zip(items, outputs)]
    write_jsonl_atomic(run.path(stage), records)
    must_exist = []
    if mcq:
        write_jsonl_atomic(run.path(f"{stage}_mcq"), mcq_generation_records(mcq, outputs[len(items):]))
        must_exist.append(str(run.path(f"{stage}_mcq")))
    new_tokens = sum(o["new_tokens"] for o in outputs)
    tps = round(new_tokens / max(seconds, 1e-9), 1)
    print(f"{stage}: {new_tokens} tokens in {seconds:.1f} s ({tps} tokens/s); peak GPU memory reserved "
          f"{stats.get('peak_gpu_reserved_gib', 'n/a')} GiB (allocated {stats.get('peak_gpu_allocated_gib', 'n/a')})",
          flush=True)
    run.write_manifest(cfg, stage, questions=len(records), mcq_questions=len(mcq or []), seconds=round(seconds, 2),
                       generated_tokens=new_tokens, tokens_per_second=tps, backend=loaded.backend.name,
                       generation_path=path.path, batch_size=plan.batch_size,
                       peak_gpu_reserved_gib=stats.get("peak_gpu_reserved_gib"), must_exist=must_exist,
                       generation={**path.record(), **decoding, "device": loaded.device.type,
                                   "model_class": type(loaded.model).__name__,
                                   "plan": asdict(plan), "stats": stats, "gpu_gib_cap": gpu_cap_gib()})
    return records


def mcq_generation_records(rows: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per multiple-choice question its id and the fields `accuracy.answer_mcq` adds (graded in the comparison)."""
    return [{"id": r["id"], **{k: o[k] for k in accuracy.GENERATED_FIELDS}} for r, o in zip(rows, outputs)]


def mcq_generations(cfg: Config, run: Run, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]] | None:
    """Both models' answers to `rows` as stages 01 and 04 wrote them ({"base": [...], "tuned": [...]}), or None
    when either stage's are not current (then the comparison generates them itself)."""
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


def baseline(cfg: Config, run: Run, prepared, loaded: Loaded | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Generations of the base model (stage 01), reused when current. `loaded`: the base model already loaded
    for `generation_path(cfg, run, "baseline")` and switched to inference; without it (or when it was loaded
    otherwise) the model is loaded here, only if the generations must be made."""

    def make() -> list[dict[str, Any]]:
        path = generation_path(cfg, run, "baseline")
        model = loaded
        if model is not None and not matches(model, path):
            print(f"baseline: the model passed in ({model.backend.name}, {model.backend.dtype}, 4-bit "
                  f"{model.backend.load_in_4bit}) is not what generation path {path.path} needs ({path.weights}, "
                  f"{path.backend}): loading that", flush=True)
            model = None
        return generate_stage(cfg, run, "baseline", model or load_for_generation(cfg, path), prepared, path)

    return run.reuse_or_build(cfg, "baseline", make, lambda: read_jsonl(run.path("baseline")), force=force)


class FinetunedModel:
    """Base + adapter, loaded on first use, then shared by stage 04's generation and its scoring.

    Nothing loads when the run folder's generations and comparison are both reused. `adapter_dir` None means
    the run's own adapter (trained first when missing or made with other settings). `loads` counts the loads,
    `release()` frees the memory.
    """

    def __init__(self, cfg: Config, run: Run, prepared, adapter_dir: Path | None = None, *,
                 model=None, tokenizer=None, path: GenerationPath | None = None):
        """`model`, `tokenizer`, `path`: base + adapter as a notebook cell loaded them for `path`."""
        self.cfg, self.run, self.prepared = cfg, run, prepared
        self.own_adapter = adapter_dir is None
        self._adapter_dir = None if adapter_dir is None else Path(adapter_dir)
        self._trained: TrainResult | None = None
        self._loaded: Loaded | None = None if model is None else Loaded(model, tokenizer, path.backend_choice())
        self.path: GenerationPath | None = path
        self.loads = 0 if model is None else 1

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
            adapter = self.adapter_dir  # trains first when needed
            self.path = self.path or generation_path(self.cfg, self.run, "finetuned")
            self._loaded = load_for_generation(self.cfg, self.path, adapter)
            self.loads += 1
        return self._loaded

    def release(self) -> None:
        """Drop the weights (GPU memory back to the allocator); a later get() loads again."""
        if self._loaded is None:
            return
        self._loaded.model = None
        self._loaded = None
        free_memory()


def finetuned(cfg: Config, run: Run, prepared, force: bool = False,
              loaded: FinetunedModel | None = None) -> list[dict[str, Any]]:
    """Generations of base + adapter (stage 04); trains first if the adapter is missing or stale. Pass `loaded`
    (a FinetunedModel) to share one loaded model with `compare`."""
    model = loaded if loaded is not None else FinetunedModel(cfg, run, prepared)

    def make() -> list[dict[str, Any]]:
        return generate_stage(cfg, run, "finetuned", model.get(), prepared, model.path)

    return run.reuse_or_build(cfg, "finetuned", make, lambda: read_jsonl(run.path("finetuned")), force=force)


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


def mcq_clean(cfg: Config, rows: list[dict[str, Any]] | None, prepared) -> tuple[list[dict[str, Any]] | None, dict | None]:
    """`rows` without the questions that share compare.contamination_span characters with a training question
    (`evaluate.contamination`), and what was checked and left out (None: no check, or no rows)."""
    span = cfg.compare.contamination_span
    if rows is None or not span or prepared is None:
        return rows, None
    train = [r["Question"] for r in prepared.train]
    return contamination.drop_contaminated(rows, train, span, against=f"the {len(train)} training rows' Question text")


def mcq_generation_rows(cfg: Config, prepared=None) -> list[dict[str, Any]] | None:
    """The first compare.mcq_generate_rows (0: all) of the scored multiple-choice questions, without contaminated ones."""
    rows, _ = mcq_clean(cfg, mcq_rows(cfg), prepared)
    return None if rows is None else rows[: cfg.compare.mcq_generate_rows or None]


def mcq_more_sets(cfg: Config, prepared=None) -> list[dict[str, Any]]:
    """The further sets of compare.mcq_more, each {"source", "rows" (contaminated ones left out; None: it did
    not load), "contamination", "note"}: a set that does not load (offline, a wrong id) is skipped, with why."""
    out = []
    for source in cfg.compare.mcq_more:
        try:
            rows = accuracy.load_mcq_rows(source, split=None, limit=cfg.compare.mcq_more_rows or None)
        except Exception as e:  # the Hub unreachable, a wrong id, a bad row: this set only is skipped
            out.append({"source": source, "rows": None, "contamination": None,
                        "note": f"{source} skipped: it did not load ({type(e).__name__}: {str(e)[:200]})"})
            continue
        clean, checked = mcq_clean(cfg, rows, prepared)
        out.append({"source": source, "rows": clean, "contamination": checked,
                    "note": f"{source}: {len(clean)} questions scored by option likelihood"
                            + (f" ({checked['excluded']} left out as contaminated)" if checked else "")})
    return out


def mcq_preview(cfg: Config) -> dict[str, Any]:
    """What stage 04 passes to the accuracy helpers: the set, its size, the decoding and the first prompt."""
    from r1helpers.core import prompts

    rows = mcq_rows(cfg)
    c = cfg.compare
    n = len(rows) if rows else 0
    return {"source": c.mcq_source, "split": c.mcq_split, "questions": n,
            "scored by": ("not measured" if rows is None else "option likelihood"
                          + (" and stated letter" if c.mcq_generate else "")),
            "answered by generation": min(n, c.mcq_generate_rows or n) if c.mcq_generate else 0,
            "answered under the authors' protocol": min(n, c.mcq_protocol_rows),
            "further sets (option likelihood)": ", ".join(c.mcq_more) or "none",
            "contamination check": f"{c.contamination_span} shared characters" if c.contamination_span else "off",
            "decoding": mcq_decoding(cfg),
            "first prompt": prompts.build_prompt(accuracy.mcq_question(rows[0])) if rows else None}


def mcq_decoding(cfg: Config) -> dict[str, Any] | None:
    """The held-out generations' decoding (never streamed) for the multiple-choice answers; None when not generated."""
    if not cfg.compare.mcq_generate:
        return None
    return {k: v for k, v in generation_kwargs(cfg).items() if k != "stream"}
