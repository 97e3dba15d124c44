"""Export the fine-tuned model for every downstream tool, check each file, then (maybe) push.

The adapter (peft), the adapter merged into the base model's 16-bit weights
(transformers, vLLM) and GGUF files (llama.cpp, Ollama, LM Studio). Before anything is
written, the export's size is compared with the free space where it goes, and the
stage refuses with a message rather than filling the disk half-way. Each artefact is
written into a temporary folder, checked against the trained model, and only then
renamed into place: a file that fails its check is never left behind. The Hub push
happens only with a token and `export.hub_repo`; otherwise the run folder gets what
would be uploaded.

    python -m r1helpers.pipeline --stages 05
    python -m r1helpers.pipeline --stages 05 --set export.output_dir=/kaggle/tmp/export
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.hardware import free_memory
from r1helpers.core.runs import Run, atomic_dir, read_json, write_json_atomic, write_text_atomic

# Beside the estimate: filesystem slack, tokenizer files, card, temporary check files.
SPACE_MARGIN_BYTES = 512 * 2**20
SPACE_MARGIN_FRACTION = 0.05
# Files of a Hub checkpoint the merge needs (weights, configs); never the .bin or original/ copies.
BASE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json"]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportSpaceError(RuntimeError):
    """The export would not fit on the disk it is written to; nothing was written."""


# ---- where, and how big -------------------------------------------------------------------------

def output_dir(cfg: Config, run: Run) -> Path:
    """export.output_dir; unset, /kaggle/tmp on Kaggle (large files) and the run folder's export/ elsewhere."""
    if cfg.export.output_dir:
        return Path(cfg.export.output_dir).expanduser().resolve()
    from r1helpers.core.kaggle_paths import large_output_dir

    return large_output_dir(run.root.name) or run.stage_dir("export")


@dataclass
class BaseCheckpoint:
    """The 16-bit base weights the adapter is merged into: a local folder, or still on the Hub."""

    name: str
    folder: Path | None
    parameters: int
    download_bytes: int


def _complete(folder: Path) -> bool:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((folder / s).is_file() for s in shards)
    return (folder / "model.safetensors").is_file()


def locate_base(cfg: Config) -> BaseCheckpoint:
    """Find the base checkpoint without downloading it, and count its parameters from the headers."""
    from r1helpers.export.gguf import tensor_shapes
    from r1helpers.modeling.tiny import resolve_model_path

    name = resolve_model_path(cfg.model.name)
    folder = Path(name) if Path(name).is_dir() else _cached_snapshot(name, cfg.model.revision)
    if folder is not None and _complete(folder):
        n = sum(_numel(s) for s in tensor_shapes(folder).values())
        return BaseCheckpoint(cfg.model.name, folder, n, 0)
    return _hub_base(name, cfg.model.revision)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=BASE_PATTERNS, local_files_only=True))
    except Exception:
        return None


def _hub_base(repo: str, revision: str | None) -> BaseCheckpoint:
    from huggingface_hub import HfApi

    try:
        meta = HfApi().get_safetensors_metadata(repo, revision=revision)
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:
        raise RuntimeError(f"model.name={repo!r}: the 16-bit base weights are neither local nor reachable on the Hub "
                           f"({type(e).__name__}); the merge needs them") from None
    size = sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))
    return BaseCheckpoint(repo, None, sum(meta.parameter_count.values()), size)


def fetch_base(cfg: Config, base: BaseCheckpoint) -> Path:
    if base.folder is not None:
        return base.folder
    from huggingface_hub import snapshot_download

    print(f"downloading the 16-bit base weights of {base.name} ({base.download_bytes / 1e9:.1f} GB)")
    return Path(snapshot_download(base.name, revision=cfg.model.revision, allow_patterns=BASE_PATTERNS))


@dataclass
class Planned:
    what: str
    where: Path
    bytes: int


def gguf_source_kind(merged_dtype: str) -> str:
    """q4_k_m is quantized from an unquantized GGUF of the merged model's own type: no extra rounding."""
    return "bf16" if merged_dtype == "bfloat16" else "f16"


def plan(cfg: Config, run: Run, base: BaseCheckpoint, adapter_dir: Path, merged_dtype: str,
         quantize: bool) -> list[Planned]:
    """Every large thing this export writes, with its estimated size and the folder it lands in."""
    from r1helpers.export.gguf import BYTES_PER_PARAM

    out, n = output_dir(cfg, run), base.parameters
    items = [Planned("adapter", out, _dir_bytes(adapter_dir))]
    kinds = [k for k in cfg.export.gguf if k != "q4_k_m" or quantize]
    if cfg.export.save_merged_16bit or kinds:
        note = "" if cfg.export.save_merged_16bit else " (temporary, for GGUF)"
        items.append(Planned(f"merged 16-bit{note}", out, 2 * n))
    items += [Planned(f"GGUF {k}", out, int(BYTES_PER_PARAM[k] * n)) for k in kinds]
    if "q4_k_m" in kinds and gguf_source_kind(merged_dtype) not in kinds:
        items.append(Planned(f"GGUF {gguf_source_kind(merged_dtype)} (temporary, quantized to q4_k_m)", out, 2 * n))
    if base.download_bytes:
        from huggingface_hub.constants import HF_HUB_CACHE

        items.append(Planned("base model download", Path(HF_HUB_CACHE), base.download_bytes))
    return items


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing(path)).free


def check_space(items: list[Planned]) -> dict[str, Any]:
    """Refuse before writing when a disk cannot hold what goes onto it (with a margin)."""
    by_disk: dict[int, list[Planned]] = {}
    for item in items:
        by_disk.setdefault(os.stat(_existing(item.where)).st_dev, []).append(item)
    report = {}
    for group in by_disk.values():
        where = group[0].where
        need = sum(i.bytes for i in group)
        need = int(need * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES
        free = free_bytes(where)
        report[str(where)] = {"needed_bytes": need, "free_bytes": free}
        if need > free:
            raise ExportSpaceError(space_message(group, need, free))
    return report


def space_message(group: list[Planned], need: int, free: int) -> str:
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    parts = ", ".join(f"{i.what} {gb(i.bytes)}" for i in group)
    return (
        f"export refused: it needs about {gb(need)} in {group[0].where} ({parts}, plus margin) but only {gb(free)} "
        "is free there. Nothing was written. Set export.output_dir to a larger disk (on Kaggle "
        "export.output_dir=/kaggle/tmp/export: /kaggle/working keeps only about 19.5 GB), free space (an earlier "
        "export stays until the new one is complete), or export less (export.gguf=[q4_k_m] or [], "
        "export.save_merged_16bit=false)."
    )


# ---- the artefacts --------------------------------------------------------------------------------

def export_tokenizer(cfg: Config):
    """The training tokenizer with pad distinct from EOS and the template that renders the training prompt."""
    from r1helpers.core import prompts
    from r1helpers.workflow.steps import load_tokenizer_for

    tok = load_tokenizer_for(cfg)
    tok.chat_template = prompts.CHAT_TEMPLATE
    return tok


def write_adapter(adapter_dir: Path, tmp: Path, tokenizer) -> None:
    for name in ADAPTER_FILES:
        shutil.copy2(Path(adapter_dir) / name, tmp / name)
    tokenizer.save_pretrained(str(tmp))


def write_merged(base_dir: Path, adapter_dir: Path, tmp: Path, tokenizer, dtype: str) -> dict[str, Any]:
    from r1helpers.export.merge import merge_lora, weight_check

    report = merge_lora(base_dir, adapter_dir, tmp, dtype)
    tokenizer.save_pretrained(str(tmp))
    _fix_generation_config(tmp, tokenizer)
    return {"merge": asdict(report), "weights": weight_check(base_dir, adapter_dir, tmp)}


def _fix_generation_config(folder: Path, tokenizer) -> None:
    """Pad distinct from EOS, as in training, so batched generation stops at EOS."""
    path = folder / "generation_config.json"
    gen = json.loads(path.read_text()) if path.is_file() else {}
    gen.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=gen.get("eos_token_id", tokenizer.eos_token_id),
               pad_token_id=tokenizer.pad_token_id)
    path.write_text(json.dumps(gen, indent=2) + "\n")


def modelfile(gguf_name: str) -> str:
    """An Ollama Modelfile: Ollama does not run Jinja templates from GGUF, so it gets the prompt here."""
    from r1helpers.core import prompts

    head, _, _ = prompts.build_prompt("\x00").partition("\x00")
    tail = prompts.build_prompt("\x00").partition("\x00")[2]
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{{{{ if .Prompt }}}}{head}{{{{ .Prompt }}}}{tail}{{{{ end }}}}{{{{ .Response }}}}"""\n')


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


def export_adapter(ctx: Context) -> dict[str, Any]:
    path = ctx.out / "adapter"
    with atomic_dir(path) as tmp:
        write_adapter(ctx.adapter_dir, tmp, ctx.tokenizer)
        _card(ctx, "adapter", tmp, None)
    return {"path": str(path), "bytes": _dir_bytes(path), "checks": {"loads_with_peft": "see merged check"}}


def export_merged(ctx: Context, dtype: str, keep: bool) -> tuple[dict[str, Any], Path, Any]:
    """Merge, check against base + adapter, keep (or hand back a temporary folder for GGUF)."""
    from r1helpers.export import checks as ec

    probes = None
    if ctx.logits_ok:
        probes = ec.adapter_reference(ctx.base_dir, ctx.out / "adapter", ctx.prompts, ctx.cfg.export.check_tokens)
        free_memory()
    path = ctx.out / "merged_16bit"
    target = path if keep else Path(tempfile.mkdtemp(dir=ctx.out, prefix=".merged-for-gguf-"))
    with atomic_dir(target) as tmp:
        checks = write_merged(ctx.base_dir, ctx.out / "adapter", tmp, ctx.tokenizer, dtype)
        if probes is not None:
            checks["logits_vs_adapter"] = ec.check_merged(tmp, probes)
        if keep:
            _card(ctx, "merged", tmp, checks)
    free_memory()
    record = {"path": str(target), "bytes": _dir_bytes(target), "dtype": checks["merge"]["dtype"], "checks": checks}
    return record, target, probes


def export_gguf(ctx: Context, merged: Path, dtype: str, quantizer) -> dict[str, Any]:
    """Write each GGUF type, check it, and keep the folder only when all passed."""
    from r1helpers.export import checks as ec
    from r1helpers.export.gguf import file_name, write_gguf

    kinds = sorted((k for k in ctx.cfg.export.gguf if k != "q4_k_m" or quantizer is not None),
                   key=lambda k: k == "q4_k_m")  # after the unquantized file it may be made from
    stem = f"{Path(ctx.cfg.model.name).name}-medical-cot"
    probes = ec.reference_probes(ec.load_float32(merged), ctx.prompts, ctx.cfg.export.check_tokens) \
        if ctx.logits_ok else None
    free_memory()
    path = ctx.out / "gguf"
    files: dict[str, Any] = {}
    with atomic_dir(path) as tmp:
        source = gguf_source_kind(dtype)
        for kind in kinds:
            target = tmp / file_name(stem, kind)
            if kind == "q4_k_m":
                src = tmp / file_name(stem, source)
                temporary = not src.is_file()
                if temporary:
                    src = tmp / f".{file_name(stem, source)}"
                    write_gguf(merged, src, source, stem, ctx.cfg.model.name, _template())
                quantizer.quantize(src, target, kind)
                if temporary:
                    src.unlink()
            else:
                write_gguf(merged, target, kind, stem, ctx.cfg.model.name, _template())
            print(f"wrote {target.name} ({target.stat().st_size / 2**20:.1f} MiB); checking it")
            files[kind] = {"file": target.name, "bytes": target.stat().st_size,
                           "checks": check_one_gguf(ctx, target, kind, merged, probes)}
        names = [f["file"] for f in files.values()]
        if names:
            write_text_atomic(tmp / "Modelfile", modelfile(names[-1]))
        _card(ctx, "gguf", tmp, {k: v["checks"] for k, v in files.items()})
    return {"path": str(path), "bytes": _dir_bytes(path), "files": files}


def _template() -> str:
    from r1helpers.core import prompts

    return prompts.CHAT_TEMPLATE


def check_one_gguf(ctx: Context, path: Path, kind: str, merged: Path, probes) -> dict[str, Any]:
    from r1helpers.export import checks as ec

    question = ctx.cfg.infer.example_questions[0] if ctx.cfg.infer.example_questions else "What is fever?"
    checks: dict[str, Any] = {"metadata": ec.gguf_metadata_check(path, ctx.tokenizer, question),
                              "weights": ec.gguf_weight_check(path, merged)}
    if probes is None:
        checks["logits"] = "skipped: a float32 copy of the model does not fit in memory; weights checked instead"
        return checks
    checks["transformers"] = ec.check_gguf_transformers(path, probes, kind)
    free_memory()
    if ec.llama_cpp_available():
        checks["llama.cpp"] = ec.check_gguf_llama_cpp(path, probes, kind, ctx.prompt_texts)
    else:
        checks["llama.cpp"] = "skipped: llama-cpp-python is not installed (pip install llama-cpp-python)"
    return checks


def _card(ctx: Context, kind: str, folder: Path, checks: dict[str, Any] | None) -> None:
    from r1helpers.export.hub import default_repo, model_card, repo_ids

    repo = repo_ids(ctx.cfg.export.hub_repo or default_repo(ctx.cfg, ctx.run))[kind]
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    write_text_atomic(folder / "README.md", model_card(ctx.cfg, ctx.run, kind, repo, files, checks))


# ---- the stage ------------------------------------------------------------------------------------

def probe_prompts(cfg: Config, prepared, tokenizer) -> tuple[list[list[int]], list[str]]:
    """The example question and two held-out ones, as the training prompt (ids with BOS, text without)."""
    from r1helpers.core import prompts
    from r1helpers.workflow.steps import eval_questions

    questions = list(cfg.infer.example_questions[:1]) + [q["question"] for q in eval_questions(prepared, 2)]
    questions = questions or ["What is fever?"]
    return ([prompts.encode_prompt(tokenizer, q) for q in questions],
            [prompts.build_prompt(q) for q in questions])


def export(cfg: Config, run: Run, force: bool = False) -> dict[str, Any]:
    """Adapter, merged 16-bit model and GGUF files, each checked; then the Hub push or its dry run."""
    return run.reuse_or_build(cfg, "export", lambda: _export(cfg, run), lambda: read_json(run.path("exported")),
                              force=force)


def _export(cfg: Config, run: Run) -> dict[str, Any]:
    from r1helpers.export import checks as ec
    from r1helpers.workflow.steps import ensure_trained, prepare
    from r1helpers.export.gguf import find_quantizer
    from r1helpers.export.merge import resolve_dtype

    prepared = prepare(cfg, run)
    trained = ensure_trained(cfg, run, prepared)
    notes: list[str] = []
    quantizer = None
    if "q4_k_m" in cfg.export.gguf:
        quantizer, why = find_quantizer(cfg.export.llama_quantize)
        notes.append(f"q4_k_m: {why}" + ("" if quantizer else "; skipped"))
    base = locate_base(cfg)
    dtype = resolve_dtype(cfg.export.merged_dtype, base.folder) if base.folder else \
        (cfg.export.merged_dtype if cfg.export.merged_dtype != "auto" else "bfloat16")
    items = plan(cfg, run, base, trained.adapter_dir, dtype, quantizer is not None)
    space = check_space(items)
    out = output_dir(cfg, run)
    out.mkdir(parents=True, exist_ok=True)
    if out != run.stage_dir("export"):
        notes.append(f"large files in {out} (export.output_dir / Kaggle's /kaggle/tmp), records in the run folder")
    base_dir = fetch_base(cfg, base)
    tokenizer = export_tokenizer(cfg)
    ids, texts = probe_prompts(cfg, prepared, tokenizer)
    logits_ok = ec.logits_fit(base.parameters)
    if not logits_ok:
        notes.append("logit checks skipped: a float32 copy does not fit in memory; every weight is checked instead")
    ctx = Context(cfg, run, out, base_dir, trained.adapter_dir, tokenizer, ids, texts, logits_ok, notes)
    return _export_all(ctx, dtype, quantizer, items, space)


def _export_all(ctx: Context, dtype: str, quantizer, items: list[Planned], space: dict[str, Any]) -> dict[str, Any]:
    from r1helpers.export.hub import publish

    cfg, run = ctx.cfg, ctx.run
    artefacts: dict[str, Any] = {"adapter": export_adapter(ctx)}
    print(f"adapter: {artefacts['adapter']['path']}")
    merged_path = None
    if cfg.export.save_merged_16bit or cfg.export.gguf:
        record, merged_path, _ = export_merged(ctx, dtype, keep=cfg.export.save_merged_16bit)
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
    hub = publish(cfg, run, {k: Path(v["path"]) for k, v in artefacts.items()})
    print(hub["message"])
    record = {"output_dir": str(ctx.out), "artefacts": artefacts, "notes": ctx.notes, "hub": hub,
              "space": {"planned": [{"what": i.what, "where": str(i.where), "bytes": i.bytes} for i in items],
                        "disks": space}}
    write_json_atomic(run.path("exported"), record)
    run.write_manifest(cfg, "export", artefacts={k: v["path"] for k, v in artefacts.items()},
                       must_exist=[v["path"] for v in artefacts.values()])
    for note in ctx.notes:
        print(note)
    return record


# ---- views for the notebook ---------------------------------------------------------------------

def _check_line(checks: dict[str, Any]) -> str:
    """One sentence per artefact: the numbers a reader looks for."""
    parts = []
    if isinstance(checks.get("logits_vs_adapter"), dict):
        c = checks["logits_vs_adapter"]
        parts.append(f"vs base+adapter: max |Δlogit| {c['max_abs_logit_diff']:.2g}, greedy identical "
                     f"{c['greedy_identical']}")
    if isinstance(checks.get("weights"), dict) and "max_error_in_rounding_units" in checks["weights"]:
        parts.append(f"weights within {checks['weights']['max_error_in_rounding_units']} 16-bit roundings")
    for reader in ("transformers", "llama.cpp"):
        c = checks.get(reader)
        if isinstance(c, dict):
            parts.append(f"{reader}: max |Δlogit| {c['max_abs_logit_diff']:.2g}, top-1 {c['top1_agreement']:.0%}, "
                         f"greedy identical {c['greedy_identical']}")
        elif isinstance(c, str):
            parts.append(f"{reader}: {c.split(':')[0]}")
    return "; ".join(parts) or "-"


def summary_table(exported: dict[str, Any]):
    """One row per written file or folder: where, how big, and what its checks measured."""
    import pandas as pd

    rows = []
    for kind, a in exported.get("artefacts", {}).items():
        if kind == "gguf":
            for gkind, f in a.get("files", {}).items():
                rows.append((f"gguf {gkind}", str(Path(a["path"]) / f["file"]), f["bytes"], _check_line(f["checks"])))
        else:
            rows.append((kind, a["path"], a["bytes"], _check_line(a.get("checks", {}))))
    hub = exported.get("hub", {})
    rows.append(("hub", ", ".join(r["repo_id"] for r in hub.get("repos", [])), None, hub.get("message", "")))
    df = pd.DataFrame(rows, columns=["artefact", "path", "bytes", "checks"]).set_index("artefact")
    df["MiB"] = (df.pop("bytes") / 2**20).round(1)
    return df[["path", "MiB", "checks"]]
