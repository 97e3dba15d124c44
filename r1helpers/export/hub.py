"""Model cards, and the Hub push that happens only with a token, a repo id and a network.

Each exported artefact (adapter, merged 16-bit model, GGUF files) goes to its own
repository, private unless `export.hub_private=false`: `<repo>-lora`, `<repo>` and
`<repo>-GGUF`. Without a token, a repo id or the Hub, nothing leaves the machine:
the run folder gets `export/hub/upload_plan.json` (every file with its size and
sha256) and the card each repository would get, and the notebook says so.

    python -m r1helpers.pipeline --stages 05 --set export.hub_repo=you/r1-medical
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.runs import Run, read_json, write_json_atomic, write_text_atomic

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
    return {kind: f"{base}{suffix}" for kind, suffix in REPO_SUFFIX.items()}


def default_repo(cfg: Config, run: Run) -> str:
    """What a repository could be called when export.hub_repo is unset (dry run only)."""
    name = Path(cfg.model.name).name.replace("_", "-")
    return PLACEHOLDER_REPO.format(name=f"{name}-medical-cot-{run.root.name}")


# ---- what goes into the card --------------------------------------------------------------------

def comparison_summary(run: Run) -> dict[str, Any] | None:
    """Headline and per-metric rows of stage 04, read defensively: the card never fails on it."""
    path = run.stage_dir("compare") / "comparison.json"
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


def _training_metrics(run: Run) -> dict[str, Any]:
    try:
        return read_json(run.stage_dir("train") / "metrics.json")
    except (OSError, ValueError):
        return {}


def _front_matter(cfg: Config, kind: str) -> list[str]:
    lines = ["---", f"base_model: {cfg.model.name}", f"library_name: {LIBRARY[kind]}",
             "pipeline_tag: text-generation", "language:", "- en"]
    if "/" in cfg.data.source and not Path(cfg.data.source).exists() and not cfg.data.source.startswith("r1helpers/"):
        lines += ["datasets:", f"- {cfg.data.source}"]
    if cfg.model.name in LICENSES:
        lines.append(f"license: {LICENSES[cfg.model.name]}")
    tags = ["medical", "reasoning", "chain-of-thought", "lora", "not-for-clinical-use"]
    tags += {"gguf": ["gguf", "llama.cpp"], "adapter": ["peft"], "merged": []}[kind]
    return lines + ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]


def _recipe(cfg: Config, run: Run) -> list[str]:
    d, lo, t, m = cfg.data, cfg.lora, cfg.train, cfg.model
    train = _training_metrics(run)
    lines = [
        f"- Base model: `{m.name}`" + (f" (revision `{m.revision}`)" if m.revision else ""),
        f"- Dataset: `{d.source}`" + (f", config `{d.config_name}`" if d.config_name else "")
        + f", split `{d.split}`: the first {d.train_rows} rows train; the next {d.eval_rows} are held out and never "
          f"trained on; rows over {m.max_seq_length} tokens: {d.overlong}",
        f"- LoRA: r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, bias={lo.bias}, on {', '.join(lo.target_modules)}",
        f"- Training: {t.max_steps} steps, batch {t.per_device_train_batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}, learning rate {t.learning_rate} ({t.lr_scheduler_type}, warm-up "
        f"{t.warmup_steps}), optimizer {t.optim}, weight decay {t.weight_decay}, seed {t.seed}",
        f"- Base weights while training: {'4-bit (QLoRA)' if m.load_in_4bit else 'full precision'}; the export merges "
        "the adapter into the base model's 16-bit weights, not into dequantized 4-bit ones",
    ]
    if train.get("train_loss") is not None:
        lines.append(f"- Final training loss: {_num(train['train_loss'])} ({train.get('backend', '?')} backend, "
                     f"{_num(train.get('seconds'))} s)")
    return lines


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


def model_card(cfg: Config, run: Run, kind: str, repo: str, files: list[tuple[str, int]],
               checks: dict[str, Any] | None = None) -> str:
    """The README.md a repository gets: what it is, how it was made, how well it did, and what not to do."""
    from r1helpers.core import prompts

    summary = comparison_summary(run)
    lines = _front_matter(cfg, kind) + [
        f"# {repo.split('/')[-1]}", "",
        f"{WHAT[kind]} of `{cfg.model.name}` fine-tuned with LoRA on medical chain-of-thought data.",
        "", f"> {NOT_FOR_CLINICAL_USE}", "",
    ]
    if cfg.profile == "cpu":
        lines += ["> This export comes from the CPU profile: a tiny, randomly initialised model trained for a few "
                  "steps to check the pipeline. It does not answer anything.", ""]
    lines += ["## How it was trained", "", *_recipe(cfg, run), "",
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
    lines += ["## Intended use", "",
              "Research and teaching: studying how a small LoRA run changes a reasoning model's style and accuracy "
              "on medical questions, and reproducing this notebook series.", "",
              "## Limitations", "",
              f"- Trained on {cfg.data.train_rows} examples for {cfg.train.max_steps} steps: a demonstration, not a "
              "validated medical model.",
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

def sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def listing(folder: Path) -> list[dict[str, Any]]:
    """Every file upload_folder would send: path relative to the folder, size and sha256."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    return [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256(p)} for p in files]


def why_not_push(cfg: Config) -> str | None:
    """None when a push can happen; otherwise the reason, which the notebook prints."""
    if not cfg.export.push:
        return "export.push is empty"
    if not cfg.export.hub_repo:
        return "no export.hub_repo set"
    if not os.environ.get("HF_TOKEN"):
        return "no Hugging Face token (HF_TOKEN in the environment, Kaggle secrets, Colab or .env)"
    from r1helpers.core.config import hub_reachable

    if not hub_reachable():
        return "the Hugging Face Hub is unreachable (offline or HF_HUB_OFFLINE=1)"
    return None


def publish(cfg: Config, run: Run, artefacts: dict[str, Path]) -> dict[str, Any]:
    """Push the artefacts named in export.push, or write the dry run into the run folder; say which."""
    from r1helpers.core.secrets import load_secrets

    load_secrets(ask=False)
    chosen = {k: Path(v) for k, v in artefacts.items() if k in cfg.export.push}
    reason = why_not_push(cfg)
    repos = repo_ids(cfg.export.hub_repo or default_repo(cfg, run))
    if reason is None:
        return _push(cfg, chosen, repos)
    return dry_run(cfg, run, chosen, repos, reason)


def dry_run(cfg: Config, run: Run, chosen: dict[str, Path], repos: dict[str, str], reason: str) -> dict[str, Any]:
    out = run.stage_dir("export") / "hub"
    plan = {"pushed": False, "reason": reason, "private": cfg.export.hub_private, "repos": []}
    for kind, folder in chosen.items():
        files = listing(folder)
        card = folder / "README.md"
        if card.is_file():
            write_text_atomic(out / kind / "README.md", card.read_text(encoding="utf-8"))
        plan["repos"].append({"kind": kind, "repo_id": repos[kind], "folder": str(folder), "files": files,
                              "total_bytes": sum(f["size"] for f in files)})
    write_json_atomic(out / "upload_plan.json", plan)
    plan["message"] = (f"Hub push skipped: {reason}. What would be uploaded ({', '.join(chosen) or 'nothing'}: "
                       f"files, sizes, sha256 and model cards) is in {out}.")
    return plan


def _push(cfg: Config, chosen: dict[str, Path], repos: dict[str, str]) -> dict[str, Any]:
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ["HF_TOKEN"])
    pushed = []
    for kind, folder in chosen.items():
        repo = repos[kind]
        url = api.create_repo(repo, private=cfg.export.hub_private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message=f"r1helpers export: {WHAT[kind]}")
        pushed.append({"kind": kind, "repo_id": repo, "url": str(url)})
    names = ", ".join(p["repo_id"] for p in pushed)
    return {"pushed": True, "private": cfg.export.hub_private, "repos": pushed,
            "message": f"pushed to {names} ({'private' if cfg.export.hub_private else 'public'}; an existing "
                       "repository keeps its visibility)"}
