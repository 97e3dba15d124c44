"""Stage 04's comparison as the run folder sees it: check both stages decoded alike, score both models on the
held-out rows and the multiple-choice sets, write comparison.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.runs import Run, read_json
from r1helpers.evaluate import accuracy, more_sets, protocol
from r1helpers.evaluate.compare import build_comparison, pair_generations, teacher_forced, write_outputs
from r1helpers.workflow.generate_stage import (FinetunedModel, mcq_clean, mcq_decoding, mcq_generations,
                                               mcq_more_sets, mcq_rows)


def nll_rows(cfg: Config, prepared) -> list[dict[str, Any]]:
    """The held-out rows scored teacher-forced: the first compare.nll_rows (0: all)."""
    n = len(prepared.eval) if cfg.compare.nll_rows == 0 else min(cfg.compare.nll_rows, len(prepared.eval))
    return [dict(r) for r in prepared.eval.select(range(n))]


def decoding_used(run: Run) -> dict[str, dict[str, Any] | None]:
    """Each generation stage's recorded infer settings, generation path and weights (None: not generated yet)."""
    def used(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
        if manifest is None or manifest["settings"].get("infer") is None:
            return None
        gen = manifest.get("generation") or {}
        return {**manifest["settings"]["infer"], "generation_path": manifest.get("generation_path"),
                "weights": gen.get("weights"), "attention": gen.get("attention")}

    return {stage: used(run.read_manifest(stage)) for stage in ("baseline", "finetuned")}


def check_same_decoding(run: Run) -> None:
    """Refuse a comparison whose two generation stages decoded differently or took different generation paths."""
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
    i, c = cfg.infer, cfg.compare
    decoding = {"do_sample": i.do_sample, "max_new_tokens": i.max_new_tokens, "seed": i.seed}
    if i.do_sample:
        decoding.update(temperature=i.temperature, top_p=i.top_p)
    mcq = {k: v for k, v in asdict(c).items() if k.startswith("mcq_") or k == "contamination_span"}
    if c.mcq_source is None:
        mcq["reason"] = "compare.mcq_source is null"
    return {"model": cfg.model.name, "profile": cfg.profile, "max_seq_length": cfg.model.max_seq_length,
            "decoding": decoding, "mcq": mcq}


def compare(cfg: Config, run: Run, prepared, baseline: list[dict], tuned: list[dict], force: bool = False,
            adapter_dir: Path | None = None, loaded: FinetunedModel | None = None) -> dict[str, Any]:
    """Score both models; write compare/comparison.json, or reuse it when made with these settings.

    `loaded` (the FinetunedModel `finetuned` used) avoids a second load and is released after scoring;
    `adapter_dir` scores another adapter than the run's own (then nothing is marked current)."""
    if adapter_dir is not None:
        return _compare(cfg, run, prepared, baseline, tuned, FinetunedModel(cfg, run, prepared, adapter_dir))
    model = loaded if loaded is not None else FinetunedModel(cfg, run, prepared)
    return run.reuse_or_build(cfg, "compare", lambda: _compare(cfg, run, prepared, baseline, tuned, model),
                              lambda: read_json(run.path("comparison")), force=force)


def _compare(cfg: Config, run: Run, prepared, baseline: list[dict], tuned: list[dict],
             model: FinetunedModel) -> dict[str, Any]:
    check_same_decoding(run)
    pair_generations(baseline, tuned)  # refuse mismatched question sets before any model loads
    c = cfg.compare
    # a bad source or row fails here, before any model loads; contaminated questions are left out before scoring
    mcq, contamination = mcq_clean(cfg, mcq_rows(cfg), prepared)
    more = mcq_more_sets(cfg, prepared)
    lm = model.get()
    tok, backend = lm.tokenizer, lm.backend.name
    nll = teacher_forced(lm.model, tok, nll_rows(cfg, prepared), cfg.model.max_seq_length)
    # the stated letters were generated in stages 01 and 04's batches; both sides come from one loaded model
    generated = None
    if mcq is not None and c.mcq_generate and model.own_adapter:
        generated = mcq_generations(cfg, run, mcq[: c.mcq_generate_rows or None])
    answers = None if mcq is None else accuracy.answer_mcq_before_after(
        lm.model, tok, mcq, decoding=None if generated else mcq_decoding(cfg), generate_rows=c.mcq_generate_rows or None)
    if generated:
        answers = {side: accuracy.attach_generations(answers[side], generated[side]) for side in answers}
    more_results = [_more_set(lm.model, tok, m) for m in more]
    protocol = _protocol(cfg, lm.model, tok, mcq)
    del lm
    model.release()
    notes = [f"adapter: {model.adapter_dir}", f"backend: {backend}"]
    if mcq is not None:
        notes.append(f"multiple-choice: {len(mcq)} questions of {c.mcq_source}, scored by option likelihood"
                     + (" and by the stated letter" if c.mcq_generate else " only (compare.mcq_generate is false)"))
    notes += [m["note"] for m in more]
    result = build_comparison(
        nll, baseline, tuned, lambda s: len(tok(s, add_special_tokens=False)["input_ids"]),
        primary_metric=c.primary_metric, bootstrap_samples=c.bootstrap_samples, seed=c.seed,
        settings=comparison_settings(cfg), notes=notes, log_history=model.log_history,
        mcq_rows=mcq, mcq_answers=answers, contamination=contamination, more_sets=more_results, protocol=protocol)
    write_outputs(result, run.stage_dir("compare"))
    if model.own_adapter:
        run.write_manifest(cfg, "compare", verdict=result["verdict"], headline=result["headline"])
    return result


def _more_set(model, tok, entry: dict[str, Any]) -> dict[str, Any]:
    """One further set scored by option likelihood, both models: `more_sets.more_set_result`."""
    answers = accuracy.answer_mcq_before_after(model, tok, entry["rows"]) if entry["rows"] else None
    return more_sets.more_set_result(entry["source"], entry["rows"] or None, answers, entry["contamination"], entry["note"])


def _protocol(cfg: Config, model, tok, mcq: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The first compare.mcq_protocol_rows questions answered under the dataset authors' protocol, both models."""
    c = cfg.compare
    if not mcq or not c.mcq_protocol_rows:
        return None
    return protocol.protocol_before_after(model, tok, mcq[: c.mcq_protocol_rows], source=c.mcq_source,
                                          max_new_tokens=c.mcq_protocol_max_new_tokens, seed=cfg.infer.seed)
