"""Stage 05 from the config and the run folder: export the fine-tuned model, check each file, then (maybe) push.

The adapter (peft), the adapter merged into the base model's 16-bit weights
(transformers, vLLM) and GGUF files (llama.cpp, Ollama, LM Studio). Before anything is
written, the export's size is compared with the free space where it goes, and the
stage refuses with a message rather than filling the disk half-way. Each artefact is
written into a temporary folder, checked against the trained model, and only then
renamed into place: a file that fails its check is never left behind. The Hub push
happens only with a token and `export.hub_repo`; otherwise the run folder gets what
would be uploaded.

The work itself is done by plain helpers in `r1helpers.export` (base, space, files,
merge, gguf, checks, hub); this module reads `cfg`, decides where things go and records
the run folder.

    python -m r1helpers.pipeline --stages 05
    python -m r1helpers.pipeline --stages 05 --set export.output_dir=/kaggle/tmp/export
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.hardware import free_memory
from r1helpers.core.runs import Run, atomic_dir, read_json, write_json_atomic, write_text_atomic
from r1helpers.export.base import BaseCheckpoint, fetch_base, locate_base
from r1helpers.export.files import with_chat_template, write_adapter, write_merged
from r1helpers.export.gguf import modelfile, source_kind
from r1helpers.export.space import ExportSpaceError, Planned, check_space, dir_bytes, plan_sizes

__all__ = ["ExportSpaceError", "export", "output_dir", "plan", "probe_prompts"]


def output_dir(cfg: Config, run: Run) -> Path:
    """export.output_dir; unset, /kaggle/tmp on Kaggle (large files) and the run folder's export/ elsewhere."""
    if cfg.export.output_dir:
        return Path(cfg.export.output_dir).expanduser().resolve()
    from r1helpers.core.kaggle_paths import large_output_dir

    return large_output_dir(run.root.name) or run.stage_dir("export")


def plan(cfg: Config, run: Run, base: BaseCheckpoint, adapter_dir: Path, merged_dtype: str,
         quantize: bool) -> list[Planned]:
    """Every large thing this export writes (space.plan_sizes with cfg.export's choices)."""
    download_dir = None
    if base.download_bytes:
        from huggingface_hub.constants import HF_HUB_CACHE

        download_dir = Path(HF_HUB_CACHE)
    return plan_sizes(output_dir(cfg, run), base.parameters, dir_bytes(adapter_dir),
                      keep_merged=cfg.export.save_merged_16bit,
                      gguf_kinds=[k for k in cfg.export.gguf if k != "q4_k_m" or quantize],
                      merged_dtype=merged_dtype, download_bytes=base.download_bytes, download_dir=download_dir)


def export_tokenizer(cfg: Config):
    """The training tokenizer with pad distinct from EOS and the template that renders the training prompt."""
    from r1helpers.inference.choose import load_tokenizer_for

    return with_chat_template(load_tokenizer_for(cfg))


@dataclass
class Context:
    """What every step of one export shares."""

    cfg: Config
    run: Run
    out: Path
    base_dir: Path
    adapter_dir: Path
    tokenizer: Any
    prompts: list[list[int]]
    prompt_texts: list[str]
    logits_ok: bool
    notes: list[str]
    # the merged model's own greedy tokens and logits, taken while its check had it loaded: the GGUF files'
    # reference, so that the merged model is not loaded in float32 a second time (32 GB for the 8B)
    merged_probes: Any = None
    seconds: dict[str, float] = field(default_factory=dict)  # each step's wall time, for exported.json

    @contextlib.contextmanager
    def timed(self, step: str):
        """Add the block's wall time to `seconds[step]` and print it: where an export's minutes go."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            self.seconds[step] = round(self.seconds.get(step, 0.0) + took, 1)
            print(f"export: {step} took {took:.1f} s", flush=True)


def export_adapter(ctx: Context) -> dict[str, Any]:
    path = ctx.out / "adapter"
    with atomic_dir(path) as tmp:
        write_adapter(ctx.adapter_dir, tmp, ctx.tokenizer)
        _card(ctx, "adapter", tmp, None)
    return {"path": str(path), "bytes": dir_bytes(path), "checks": {
        "loads_with_peft": "skipped: the adapter is checked through the merged model's logit check, which did not run"}}


def adapter_probes(ctx: Context):
    """The reference every merge is checked against (base + adapter through peft, in float32), or None where the
    logit checks do not fit this machine."""
    from r1helpers.export import checks as ec

    if not ctx.logits_ok:
        return None
    with ctx.timed("reference: base + adapter in float32, greedy tokens and logits"):
        probes = ec.adapter_reference(ctx.base_dir, ctx.out / "adapter", ctx.prompts, ctx.cfg.export.check_tokens)
    free_memory()
    return probes


def export_merged(ctx: Context, dtype: str, keep: bool, probes: Any = ...) -> tuple[dict[str, Any], Path, Any]:
    """Merge, check against base + adapter (`probes`, made here when not given), keep (or hand back a
    temporary folder for GGUF)."""
    from r1helpers.export import checks as ec

    if probes is ...:
        probes = adapter_probes(ctx)
    path = ctx.out / "merged_16bit"
    target = path if keep else Path(tempfile.mkdtemp(dir=ctx.out, prefix=MERGED_FOR_GGUF))
    try:
        with atomic_dir(target) as tmp:
            with ctx.timed(f"merge in {dtype} and write"):
                checks = write_merged(ctx.base_dir, ctx.out / "adapter", tmp, ctx.tokenizer, dtype)
            if probes is not None:
                own: list = []
                with ctx.timed(f"merged {dtype}: logit check"):
                    checks["logits_vs_adapter"] = ec.check_merged(tmp, probes, own=own)
                ctx.merged_probes = own
            if keep:
                _card(ctx, "merged", tmp, checks)
    except BaseException:
        if not keep:  # the temporary merge for GGUF is never left behind (a merged 8B model is 16 GB)
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        free_memory()
    record = {"path": str(target), "bytes": dir_bytes(target), "dtype": checks["merge"]["dtype"], "checks": checks}
    return record, target, probes


def export_gguf(ctx: Context, merged: Path, dtype: str, quantizer) -> dict[str, Any]:
    """Write each GGUF type, check it, and keep the folder only when all passed."""
    from r1helpers.export import checks as ec
    from r1helpers.export.gguf import file_name, write_gguf

    kinds = sorted((k for k in ctx.cfg.export.gguf if k != "q4_k_m" or quantizer is not None),
                   key=lambda k: k == "q4_k_m")  # after the unquantized file it may be made from
    stem = f"{Path(ctx.cfg.model.name).name}-medical-cot"
    probes = None
    if ctx.logits_ok:  # the merged model's own, kept by its check, else taken now
        with ctx.timed("GGUF reference: the merged model's greedy tokens and logits"):
            probes = ctx.merged_probes or ec.reference_probes(ec.load_float32(merged), ctx.prompts,
                                                              ctx.cfg.export.check_tokens)
    free_memory()
    path = ctx.out / "gguf"
    files: dict[str, Any] = {}
    with atomic_dir(path) as tmp:
        source = source_kind(dtype)
        for kind in kinds:
            target = tmp / file_name(stem, kind)
            if kind == "q4_k_m":
                src = tmp / file_name(stem, source)
                temporary = not src.is_file()
                if temporary:
                    src = tmp / f".{file_name(stem, source)}"
                    with ctx.timed(f"GGUF {source}: write (source of {kind})"):
                        write_gguf(merged, src, source, stem, ctx.cfg.model.name, ctx.tokenizer.chat_template)
                with ctx.timed(f"GGUF {kind}: llama.cpp quantize"):
                    quantizer.quantize(src, target, kind)
                if temporary:
                    src.unlink()
            else:
                with ctx.timed(f"GGUF {kind}: write"):
                    write_gguf(merged, target, kind, stem, ctx.cfg.model.name, ctx.tokenizer.chat_template)
            print(f"wrote {target.name} ({target.stat().st_size / 2**20:.1f} MiB); checking it")
            files[kind] = {"file": target.name, "bytes": target.stat().st_size,
                           "checks": check_one_gguf(ctx, target, kind, merged, probes)}
        names = [f["file"] for f in files.values()]
        if names:
            write_text_atomic(tmp / "Modelfile", modelfile(names[-1]))
        _card(ctx, "gguf", tmp, {k: v["checks"] for k, v in files.items()})
    return {"path": str(path), "bytes": dir_bytes(path), "files": files}


def check_one_gguf(ctx: Context, path: Path, kind: str, merged: Path, probes) -> dict[str, Any]:
    """The file parsed once (`shared_gguf_reader`) for all of: the metadata check, then the weight check and
    transformers' read-back at the same time (both work on the CPU, with threads). When the weights are wrong,
    their error is the one raised."""
    from concurrent.futures import ThreadPoolExecutor

    from r1helpers.export import checks as ec

    question = ctx.cfg.infer.example_questions[0] if ctx.cfg.infer.example_questions else "What is fever?"

    def weights() -> dict[str, Any]:
        with ctx.timed(f"GGUF {kind}: weight check"):
            return ec.gguf_weight_check(path, merged)

    with contextlib.ExitStack() as reading:
        with ctx.timed(f"GGUF {kind}: parse and metadata check"):
            reading.enter_context(ec.shared_gguf_reader(path))  # parsed once for all the checks (12 s for the 8B)
            checks: dict[str, Any] = {"metadata": ec.gguf_metadata_check(path, ctx.tokenizer, question)}
        with ThreadPoolExecutor(1) as pool:
            weight_check = pool.submit(weights)
            try:
                if probes is not None:
                    with ctx.timed(f"GGUF {kind}: transformers read-back and logit check"):
                        checks["transformers"] = ec.check_gguf_transformers(path, probes, kind,
                                                                            ec.float32_parameters(merged))
            finally:
                checks["weights"] = weight_check.result()  # its error first, if both fail
    if probes is None:
        checks["logits"] = "skipped: a float32 copy of the model does not fit in memory; weights checked instead"
        return checks
    free_memory()
    if ec.llama_cpp_available():
        with ctx.timed(f"GGUF {kind}: llama.cpp logit check"):
            checks["llama.cpp"] = ec.check_gguf_llama_cpp(path, probes, kind, ctx.prompt_texts)
    else:
        checks["llama.cpp"] = "skipped: llama-cpp-python is not installed (pip install llama-cpp-python)"
    return checks


def _card(ctx: Context, kind: str, folder: Path, checks: dict[str, Any] | None) -> None:
    from r1helpers.workflow.hub import card

    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    write_text_atomic(folder / "README.md", card(ctx.cfg, ctx.run, kind, files, checks))


# ---- the stage ------------------------------------------------------------------------------------

def probe_prompts(cfg: Config, prepared, tokenizer) -> tuple[list[list[int]], list[str]]:
    """The example question and two held-out ones, as the training prompt (ids with BOS, text without)."""
    from r1helpers.core import prompts
    from r1helpers.workflow.data_stage import eval_questions

    questions = list(cfg.infer.example_questions[:1]) + [q["question"] for q in eval_questions(prepared, 2)]
    questions = questions or ["What is fever?"]
    return ([prompts.encode_prompt(tokenizer, q) for q in questions],
            [prompts.build_prompt(q) for q in questions])


MERGED_FOR_GGUF = ".merged-for-gguf-"  # a temporary merge, when GGUF is wanted but merged_16bit is not kept


def adapter_hash(adapter_dir: Path) -> str:
    """sha256 of the adapter's weights: every exported artefact records the adapter it was made from."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(adapter_dir).glob("adapter_model.*")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def matches_adapter(run: Run) -> str | None:
    """Why the recorded export does not match the trained adapter (a killed export), or None when it does."""
    try:
        record = read_json(run.path("exported"))
    except (OSError, ValueError):
        return "exported.json is missing or unreadable"
    trained = adapter_hash(run.path("adapter"))
    for name, art in record.get("artefacts", {}).items():
        if art.get("adapter_sha256") != trained:
            return f"{name} was made from another adapter than train/adapter"
    exported = record.get("artefacts", {}).get("adapter")
    if exported and adapter_hash(Path(exported["path"])) != trained:
        return f"{exported['path']} holds another adapter than train/adapter"
    return None


def export(cfg: Config, run: Run, force: bool = False) -> dict[str, Any]:
    """Adapter, merged 16-bit model and GGUF files, each checked; then the Hub push or its dry run.

    A finished export is reused only when every artefact was made from the adapter now in
    train/adapter (sha256); one that is not (an export killed half-way) is made again.
    """
    with run.lock("export"):  # the check and the rebuild under one hold of the run folder (re-entrant)
        if not force and run.is_current(cfg, "export"):
            why = matches_adapter(run)
            if why:
                print(f"export: not reusing the recorded export: {why}; exporting again", flush=True)
                run.manifest_path("export").unlink()  # unfinished work: replaced, not protected
        return run.reuse_or_build(cfg, "export", lambda: _export(cfg, run),
                                  lambda: read_json(run.path("exported")), force=force)


def _export(cfg: Config, run: Run) -> dict[str, Any]:
    from r1helpers.export import checks as ec
    from r1helpers.export.gguf import find_quantizer
    from r1helpers.export.merge import resolve_dtype
    from r1helpers.workflow.train_stage import ensure_trained
    from r1helpers.workflow.data_stage import prepare

    prepared = prepare(cfg, run)
    trained = ensure_trained(cfg, run, prepared)
    notes: list[str] = []
    quantizer = None
    if "q4_k_m" in cfg.export.gguf:
        quantizer, why = find_quantizer(cfg.export.llama_quantize)
        notes.append(f"q4_k_m: {why}" + ("" if quantizer else "; skipped"))
    base = locate_base(cfg.model.name, cfg.model.revision)
    dtype = resolve_dtype(cfg.export.merged_dtype, base.folder) if base.folder else \
        (cfg.export.merged_dtype if cfg.export.merged_dtype != "auto" else "bfloat16")
    items = plan(cfg, run, base, trained.adapter_dir, dtype, quantizer is not None)
    space = check_space(items)
    out = output_dir(cfg, run)
    out.mkdir(parents=True, exist_ok=True)
    if out != run.stage_dir("export"):
        notes.append(f"large files in {out} (export.output_dir / Kaggle's /kaggle/tmp), records in the run folder")
    for stale in out.glob(MERGED_FOR_GGUF + "*"):  # left by a killed export (this process holds the run's lock)
        shutil.rmtree(stale, ignore_errors=True)
        notes.append(f"removed {stale.name}, a temporary merge left by an interrupted export")
    if not cfg.export.save_merged_16bit and (out / "merged_16bit").exists():
        kept = out / "replaced" / f"merged_16bit-{time.strftime('%Y%m%d-%H%M%S')}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out / "merged_16bit", kept)
        notes.append(f"export.save_merged_16bit=false: the earlier merged model moved aside to {kept} (delete it "
                     "yourself to free the space)")
    base_dir = fetch_base(base, cfg.model.revision)
    tokenizer = export_tokenizer(cfg)
    ids, texts = probe_prompts(cfg, prepared, tokenizer)
    where = ec.check_device(base.parameters)
    logits_ok = where == "cuda" or ec.logits_fit(base.parameters)
    notes.append(f"logit checks in float32 on the {where.upper()}" if logits_ok else
                 "logit checks skipped: a float32 copy fits neither in the GPU's nor in the machine's memory; "
                 "every weight is checked instead")
    ctx = Context(cfg, run, out, base_dir, trained.adapter_dir, tokenizer, ids, texts, logits_ok, notes)
    return _export_all(ctx, dtype, quantizer, items, space)


def dtype_candidates(requested: str, auto_choice: str) -> list[str]:
    """The 16-bit types to try merging in, in order. `auto`: float16 first (three more mantissa bits
    than bfloat16 keep a small LoRA update that a bfloat16 merge can round away; Llama weights fit
    its range, and a weight that does not makes the check fail), then the checkpoint's own type."""
    if requested != "auto":
        return [requested]
    return list(dict.fromkeys(["float16", auto_choice, "bfloat16"]))


def merge_keeping_the_adapter(ctx: Context, candidates: list[str]) -> tuple[dict[str, Any] | None, Path | None, str]:
    """Merge in the first 16-bit type whose result passes the check against base + adapter.

    When none passes, nothing merged is kept (and no GGUF is made from it): the adapter, loaded
    on the base model with peft, is then the export to use, and the notes say so.
    """
    from r1helpers.export.checks import ExportCheckError

    failures = []
    probes = adapter_probes(ctx)  # once: loading base + adapter in float32 is the slow part of a check
    for dtype in candidates:
        try:
            record, path, _ = export_merged(ctx, dtype, keep=ctx.cfg.export.save_merged_16bit, probes=probes)
        except ExportCheckError as e:
            failures.append(f"{dtype}: {e}")
            print(f"merge in {dtype} failed its check ({e})", flush=True)
            continue
        record["dtype_tried"] = failures + [f"{dtype}: passed"]
        if failures:
            ctx.notes.append(f"merged in {dtype}: " + "; ".join(failures) + f"; {dtype} passed")
        return record, path, dtype
    ctx.notes.append("no 16-bit merge kept the adapter's effect (" + "; ".join(failures) + "): no merged model or "
                     "GGUF is exported; use the adapter on the base model (peft), which is what was trained")
    return None, None, candidates[-1]


def _export_all(ctx: Context, dtype: str, quantizer, items: list[Planned], space: dict[str, Any]) -> dict[str, Any]:
    from r1helpers.workflow.hub import publish

    cfg, run = ctx.cfg, ctx.run
    with ctx.timed("adapter: write"):
        artefacts: dict[str, Any] = {"adapter": export_adapter(ctx)}
    print(f"adapter: {artefacts['adapter']['path']}")
    merged_path = None
    if cfg.export.save_merged_16bit or cfg.export.gguf:
        record, merged_path, dtype = merge_keeping_the_adapter(ctx, dtype_candidates(cfg.export.merged_dtype, dtype))
    if merged_path is not None:
        if isinstance(record["checks"].get("logits_vs_adapter"), dict):  # it passed, with this folder as reference
            artefacts["adapter"]["checks"]["loads_with_peft"] = {
                "passed": True, "how": "PeftModel.from_pretrained(base, this folder) was the reference the merged "
                                       "model's logits and greedy tokens had to match"}
        if cfg.export.save_merged_16bit:
            artefacts["merged"] = record
            print(f"merged 16-bit ({record['dtype']}): {record['path']}")
    try:
        if cfg.export.gguf and merged_path is not None:
            artefacts["gguf"] = export_gguf(ctx, merged_path, dtype, quantizer)
            print(f"GGUF: {artefacts['gguf']['path']}")
    finally:
        if merged_path is not None and not cfg.export.save_merged_16bit:
            shutil.rmtree(merged_path, ignore_errors=True)
    trained = adapter_hash(ctx.adapter_dir)
    for art in artefacts.values():
        art["adapter_sha256"] = trained
    with ctx.timed("Hub: push or dry run"):
        hub = publish(cfg, run, {k: Path(v["path"]) for k, v in artefacts.items()})
    print(hub["message"])
    record = {"output_dir": str(ctx.out), "artefacts": artefacts, "notes": ctx.notes, "seconds": ctx.seconds, "hub": hub,
              "space": {"planned": [{"what": i.what, "where": str(i.where), "bytes": i.bytes} for i in items],
                        "disks": space}}
    write_json_atomic(run.path("exported"), record)
    run.write_manifest(cfg, "export", artefacts={k: v["path"] for k, v in artefacts.items()},
                       must_exist=[v["path"] for v in artefacts.values()])
    for note in ctx.notes:
        print(note)
    return record
