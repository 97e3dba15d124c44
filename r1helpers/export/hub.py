"""Model cards, and the Hub push that happens only with a token, a repo id and a network.

Each artefact goes to its own repository, private by default: `<repo>-lora`, `<repo>` and `<repo>-GGUF`. Otherwise
nothing leaves the machine: `dry_run` writes `upload_plan.json` (each file's size and sha256) and the cards.
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
    """Stage 04's comparison.json (headline, settings, the metrics that have a `before`), or None when unreadable:
    the card never fails on it."""
    try:
        result = read_json(path)
        metrics = [m for m in result.get("metrics") or [] if m.get("before") is not None]
        return {"headline": result.get("headline"), "settings": result.get("settings") or {}, "metrics": metrics}
    except (OSError, ValueError, AttributeError):
        return None


def fmt_num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "-"


def _metrics_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| metric | n | before | after | delta | 95% CI | verdict |", "|---|---|---|---|---|---|---|"]
    for m in summary["metrics"]:
        ci = m.get("ci") or []
        ci = f"[{ci[0]:+.4g}, {ci[1]:+.4g}]" if len(ci) == 2 else "-"
        lines.append(f"| {m.get('label') or m.get('key')} | {m.get('n')} | {fmt_num(m['before'])} | "
                     f"{fmt_num(m.get('after'))} | {fmt_num(m.get('delta'))} | {ci} | {m.get('verdict') or '-'} |")
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

    `kind`: adapter | merged | gguf; `files`: (name, bytes); `recipe`: markdown bullet lines; `comparison`:
    `comparison_summary(...)` (None: no quality claim); `checks`: the export checks, quoted as JSON.
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
    from concurrent.futures import ThreadPoolExecutor

    from r1helpers.core.hardware import cpu_threads

    out = Path(out_dir)
    plan = {"pushed": False, "reason": reason, "private": private, "repos": []}
    every = sorted((f for folder in chosen.values() for f in upload_files(folder)), key=lambda p: -p.stat().st_size)
    with ThreadPoolExecutor(cpu_threads()) as pool:  # hashlib releases the GIL; the largest file first
        hashes = dict(zip(every, pool.map(sha256, every)))
    for kind, folder in chosen.items():
        files = [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": hashes[p]}
                 for p in upload_files(folder)]
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
