"""Model cards, and the Hub push that happens only with a token, a repo id and a network.

Each exported artefact (adapter, merged 16-bit model, GGUF files) goes to its own
repository, private by default: `<repo>-lora`, `<repo>` and `<repo>-GGUF`. Without a
token, a repo id or the Hub, nothing leaves the machine: `dry_run` writes
`upload_plan.json` (every file with its size and sha256) and the card each repository
would get. Plain helpers; `r1helpers.workflow.hub.publish(cfg, run, ...)` picks one.

    card = model_card("adapter", "you/r1-medical-lora", [("adapter_model.safetensors", 168_000_000)],
                      base_model="unsloth/DeepSeek-R1-Distill-Llama-8B", recipe=["- LoRA: r=16 ..."])
    push({"adapter": Path("export/adapter")}, repo_ids("you/r1-medical"), private=True, token=token)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from r1helpers.core.runs import read_json, write_json_atomic, write_text_atomic

REPO_SUFFIX = {"adapter": "-lora", "merged": "", "gguf": "-GGUF"}
LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
WHAT = {"adapter": "LoRA adapter (peft)", "merged": "Merged 16-bit model (transformers, vLLM)",
        "gguf": "GGUF files (llama.cpp, Ollama, LM Studio)"}
# Licences of base models this project knows; others are left for the user to state.
LICENSES = {"unsloth/DeepSeek-R1-Distill-Llama-8B": "llama3.1", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": "llama3.1"}
PLACEHOLDER_REPO = "YOUR_HF_USERNAME/{name}"

NOT_FOR_CLINICAL_USE = (
    "**Not for clinical decisions.** This model is a research and teaching artefact. Its answers and "
    "reasoning can be wrong while sounding confident. It must not be used to diagnose, treat or triage "
    "anyone, or to make or support any decision about a patient's care, and it is no substitute for a "
    "qualified clinician."
)


def repo_ids(base: str) -> dict[str, str]:
    """The repository of each artefact: {"adapter": base-lora, "merged": base, "gguf": base-GGUF}."""
    return {kind: f"{base}{suffix}" for kind, suffix in REPO_SUFFIX.items()}


def default_repo(model_name: str, run_name: str) -> str:
    """What a repository could be called when no repo id is set (dry run only)."""
    name = Path(model_name).name.replace("_", "-")
    return PLACEHOLDER_REPO.format(name=f"{name}-medical-cot-{run_name}")


# ---- what goes into the card --------------------------------------------------------------------

def comparison_summary(path: Path) -> dict[str, Any] | None:
    """Headline and per-metric rows of a saved comparison.json, read defensively: the card never fails on it."""
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict):
        return None
    rows = []
    for m in result.get("metrics") or []:
        if not isinstance(m, dict) or m.get("before") is None:
            continue
        ci = m.get("ci") or []
        rows.append({"metric": m.get("label") or m.get("key"), "n": m.get("n"), "before": m.get("before"),
                     "after": m.get("after"), "delta": m.get("delta"),
                     "ci": list(ci) if len(ci) == 2 else None, "verdict": m.get("verdict")})
    return {"headline": result.get("headline"), "verdict": result.get("verdict"),
            "primary_metric": result.get("primary_metric"), "metrics": rows,
            "settings": result.get("settings") if isinstance(result.get("settings"), dict) else {}}


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "-"


def _metrics_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| metric | n | before | after | delta | 95% CI | verdict |", "|---|---|---|---|---|---|---|"]
    for r in summary["metrics"]:
        ci = f"[{r['ci'][0]:+.4g}, {r['ci'][1]:+.4g}]" if r["ci"] else "-"
        lines.append(f"| {r['metric']} | {r['n']} | {_num(r['before'])} | {_num(r['after'])} | "
                     f"{_num(r['delta'])} | {ci} | {r['verdict'] or '-'} |")
    return lines


def hub_dataset(source: str | None) -> str | None:
    """A dataset id for the card's front matter: only a Hub id (owner/name), never a local file or folder or the
    bundled sample."""
    if (source and source.count("/") == 1 and not source.startswith(("/", "~", ".", "r1helpers/"))
            and Path(source).suffix not in (".jsonl", ".json", ".csv", ".parquet") and not Path(source).exists()):
        return source
    return None


def _front_matter(kind: str, base_model: str, dataset: str | None, license: str | None = None) -> list[str]:
    lines = ["---", f"base_model: {base_model}", f"library_name: {LIBRARY[kind]}",
             "pipeline_tag: text-generation", "language:", "- en"]
    if hub_dataset(dataset):
        lines += ["datasets:", f"- {dataset}"]
    license = license or LICENSES.get(base_model)
    if license:
        lines.append(f"license: {license}")
    tags = ["medical", "reasoning", "chain-of-thought", "lora", "not-for-clinical-use"]
    tags += {"gguf": ["gguf", "llama.cpp"], "adapter": ["peft"], "merged": []}[kind]
    return lines + ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]


def _usage(kind: str, repo: str, files: list[str]) -> list[str]:
    gguf = next((f for f in files if f.endswith(".gguf")), "model.gguf")
    if kind == "adapter":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
                f'tok = AutoTokenizer.from_pretrained("{repo}")']
    elif kind == "merged":
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{repo}", dtype="auto")',
                f'tok = AutoTokenizer.from_pretrained("{repo}")']
    else:
        return ["```bash", f"llama-cli -hf {repo}:{gguf.rsplit('-', 1)[-1].removesuffix('.gguf')} -cnv   # llama.cpp",
                "ollama create medical-cot -f Modelfile && ollama run medical-cot   # Ollama, from this folder",
                "```", "", "LM Studio and llama.cpp read the chat template stored in the file; Ollama gets it from "
                "the `Modelfile`."]
    code += ['ids = tok.apply_chat_template([{"role": "user", "content": "..."}], add_generation_prompt=True,',
             '                              return_tensors="pt", return_dict=True)',
             "out = model.generate(**ids, max_new_tokens=1200)"]
    return ["```python", *code, "```"]


def model_card(kind: str, repo: str, files: list[tuple[str, int]], *, base_model: str, recipe: list[str],
               dataset: str | None = None, train_rows: int | None = None, max_steps: int | None = None,
               comparison: dict[str, Any] | None = None, checks: dict[str, Any] | None = None) -> str:
    """The README.md a repository gets: what it is, how it was made, how well it did, and what not to do.

    `kind`: adapter | merged | gguf; `files`: (name, bytes) of the folder; `recipe`: markdown
    bullet lines saying how it was trained; `comparison`: `comparison_summary(...)` of stage 04
    (None: the card makes no quality claim); `checks`: the export checks, quoted as JSON.
    What the base model is comes from the model itself (`modeling.local.model_origin`): the locally
    built random tiny model, SmolLM2 (pretrained, from its GGUF), or a Hub model; not from the profile.
    """
    from r1helpers.core import prompts
    from r1helpers.modeling.local import model_origin

    summary = comparison
    origin = model_origin(base_model)
    front_base = origin.hub_id or base_model
    lines = _front_matter(kind, front_base, dataset, origin.license) + [
        f"# {repo.split('/')[-1]}", "",
        f"{WHAT[kind]} of `{front_base}` fine-tuned with LoRA on medical chain-of-thought data.",
        "", f"> {NOT_FOR_CLINICAL_USE}", "",
    ]
    if origin.summary:
        lines += [f"> {origin.summary}", ""]
    lines += ["## How it was trained", "", *recipe, "",
              "The prompt (training and inference alike; the chat template renders exactly this):", "", "```",
              prompts.build_prompt("{question}"), "```", "", "## Did fine-tuning help?", ""]
    if summary and summary["metrics"]:
        s = summary["settings"]
        lines += [summary["headline"] or "", "",
                  f"Base and fine-tuned model on the same held-out questions "
                  f"({s.get('held_out_rows_scored', '?')} scored teacher-forced, "
                  f"{s.get('held_out_questions_generated', '?')} generated), same prompt and decoding; "
                  "95% paired bootstrap intervals; a metric is better or worse only when its interval excludes zero.",
                  "", *_metrics_table(summary), ""]
    else:
        lines += ["No before/after comparison was found in the run folder (stage 04), so no claim about quality "
                  "is made here.", ""]
    trained_on = (f"Trained on {train_rows} examples for {max_steps} steps" if train_rows is not None
                  else "Trained briefly")
    lines += ["## Intended use", "",
              "Research and teaching: studying how a small LoRA run changes a reasoning model's style and accuracy "
              "on medical questions, and reproducing this notebook series.", "",
              "## Limitations", "",
              f"- {trained_on}: a demonstration, not a validated medical model.",
              "- The reasoning traces in the training data were written by a language model (see the dataset card); "
              "they can be wrong, and so can this model's, however fluent.",
              "- The comparison measures agreement with reference answers on a few held-out questions; it is not a "
              "clinical evaluation. English only.",
              "- Quantized GGUF files (q8_0, q4_k_m) trade accuracy for size; the export checks below bound how much.",
              "", "## Files", "", *[f"- `{name}` ({size / 2**20:.1f} MiB)" for name, size in files], "",
              "## How to use", "", *_usage(kind, repo, [n for n, _ in files]), ""]
    if checks:
        lines += ["## Export checks", "", "```json", _json(checks), "```", ""]
    return "\n".join(lines)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str)


# ---- pushing, or writing what would be pushed ----------------------------------------------------

def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def upload_files(folder: Path) -> list[Path]:
    """The files upload_folder would send from `folder` (hidden ones left out), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))


def sha256_all(files: list[Path], workers: int | None = None) -> dict[Path, str]:
    """sha256 of each file, several files at once on `workers` threads (default: the CPU count, at most 8;
    hashlib releases the GIL), the largest first so that the longest hash starts at once. On the H200
    machine, the dry run of the 8B's export (23.6 GB) took 23.7 s with the files hashed one after another."""
    from concurrent.futures import ThreadPoolExecutor

    from r1helpers.core.hardware import cpu_threads

    by_size = sorted(files, key=lambda p: -p.stat().st_size)
    with ThreadPoolExecutor(cpu_threads(workers)) as pool:
        return dict(zip(by_size, pool.map(sha256, by_size)))


def listing(folder: Path, hashes: dict[Path, str] | None = None) -> list[dict[str, Any]]:
    """Every file upload_folder would send: path relative to the folder, size and sha256 (from `hashes` when
    given, else computed here)."""
    files = upload_files(folder)
    hashes = hashes if hashes is not None else sha256_all(files)
    return [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": hashes[p]} for p in files]


def why_not_push(push: list[str], hub_repo: str | None) -> str | None:
    """None when a push can happen (something to push, a repo id, HF_TOKEN, the Hub reachable); else why not."""
    if not push:
        return "export.push is empty"
    if not hub_repo:
        return "no export.hub_repo set"
    if not os.environ.get("HF_TOKEN"):
        return "no Hugging Face token (HF_TOKEN in the environment, Kaggle secrets, Colab or .env)"
    from r1helpers.core.config import hub_reachable

    if not hub_reachable():
        return "the Hugging Face Hub is unreachable (offline or HF_HUB_OFFLINE=1)"
    return None


def dry_run(chosen: dict[str, Path], repos: dict[str, str], reason: str, out_dir: Path,
            private: bool = True) -> dict[str, Any]:
    """Write what would be uploaded into `out_dir`: upload_plan.json and each repository's README.md."""
    out = Path(out_dir)
    plan = {"pushed": False, "reason": reason, "private": private, "repos": []}
    hashes = sha256_all([f for folder in chosen.values() for f in upload_files(folder)])  # all folders at once
    for kind, folder in chosen.items():
        files = listing(folder, hashes)
        card = folder / "README.md"
        if card.is_file():
            write_text_atomic(out / kind / "README.md", card.read_text(encoding="utf-8"))
        plan["repos"].append({"kind": kind, "repo_id": repos[kind], "folder": str(folder), "files": files,
                              "total_bytes": sum(f["size"] for f in files)})
    write_json_atomic(out / "upload_plan.json", plan)
    plan["message"] = (f"Hub push skipped: {reason}. What would be uploaded ({', '.join(chosen) or 'nothing'}: "
                       f"files, sizes, sha256 and model cards) is in {out}.")
    return plan


def push(chosen: dict[str, Path], repos: dict[str, str], private: bool, token: str) -> dict[str, Any]:
    """Create each repository (private unless told) and upload its folder; returns what was pushed."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    pushed = []
    for kind, folder in chosen.items():
        repo = repos[kind]
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message=f"r1helpers export: {WHAT[kind]}")
        pushed.append({"kind": kind, "repo_id": repo, "url": str(url)})
    names = ", ".join(p["repo_id"] for p in pushed)
    return {"pushed": True, "private": private, "repos": pushed,
            "message": f"pushed to {names} ({'private' if private else 'public'}; an existing "
                       "repository keeps its visibility)"}
