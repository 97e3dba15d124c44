"""Typed configuration for the whole notebook series, with named profiles: one dataclass tree that a notebook's
parameters, a YAML file and the command line all override, checked when set so that a bad value is an error
naming the field before any model loads."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from r1helpers.core import recipes
from r1helpers.core.config_values import ConfigError, _check, _coerce, _one_of
from r1helpers.core.recipes import EXAMPLE_QUESTION, RECIPES, SEED_DATASET, SEED_MODEL, profiles, recipe_path
from r1helpers.core.recipes import hub_reachable  # noqa: F401  (tests/test_export.py patches it here)


@dataclass
class ModelConfig:
    name: str = field(default=SEED_MODEL, metadata={"help": "Hub id or local folder of the base model"})
    max_seq_length: int = field(default=2048, metadata={"help": "tokens per training example"})
    load_in_4bit: bool = field(default=True, metadata={"help": "QLoRA: 4-bit base weights (CUDA only)"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={"help": "auto: bf16 on compute capability >= 8.0, else fp16 (fp32 on CPU)"})
    backend: Literal["auto", "unsloth", "transformers"] = field(default="auto", metadata={"help": "auto: Unsloth where it imports and the GPU supports it, else transformers + peft"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)"})
    pad_token: str | None = field(default=None, metadata={"help": "pad token, an existing token that is not EOS/BOS (None: automatic: the tokenizer's own pad if it differs from EOS, a reserved Llama-3 pad, else another special token such as <|endoftext|>)"})

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", "must not be empty")
        _check(self.pad_token is None or bool(self.pad_token), "model.pad_token", "must be a token or null")
        _check(16 <= self.max_seq_length <= 131072, "model.max_seq_length", "must be in [16, 131072]")
        _one_of(self.dtype, "model.dtype", ("auto", "bfloat16", "float16", "float32"))
        _one_of(self.backend, "model.backend", ("auto", "unsloth", "transformers"))


@dataclass
class DataConfig:
    source: str = field(default=SEED_DATASET, metadata={"help": "Hub id, local .jsonl/.json/.csv/.parquet file, or a saved datasets folder"})
    config_name: str | None = field(default="en", metadata={"help": "Hub dataset config"})
    split: str = field(default="train", metadata={"help": "split to read from the source"})
    train_rows: int = field(default=500, metadata={"help": "the first N rows train the model"})
    eval_rows: int = field(default=50, metadata={"help": "held-out rows taken after the training rows; never trained on"})
    question_column: str = field(default="Question", metadata={"help": "column with the question"})
    cot_column: str = field(default="Complex_CoT", metadata={"help": "column with the chain of thought"})
    response_column: str = field(default="Response", metadata={"help": "column with the final answer"})
    overlong: Literal["drop", "truncate", "error"] = field(default="drop", metadata={"help": "rows longer than max_seq_length: drop (and count) | truncate | error"})
    lenient: bool = field(default=False, metadata={"help": "drop and count rows with an empty field, duplicate rows, and lines that are not valid JSON or not UTF-8, instead of failing"})

    def __post_init__(self) -> None:
        _check(bool(self.source), "data.source", "must not be empty")
        _check(self.train_rows >= 1, "data.train_rows", "must be >= 1")
        _check(self.eval_rows >= 0, "data.eval_rows", "must be >= 0")
        _one_of(self.overlong, "data.overlong", ("drop", "truncate", "error"))


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    bias: Literal["none", "all", "lora_only"] = field(default="none", metadata={"help": "train biases too: none | all | lora_only"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules that get adapters"},
    )
    gradient_checkpointing: Literal["unsloth", "true", "false"] = field(default="unsloth", metadata={"help": "recompute activations: unsloth (offloaded) | true | false"})
    random_state: int = field(default=3407, metadata={"help": "seed of the adapter's initialisation"})

    def __post_init__(self) -> None:
        _check(self.r >= 1, "lora.r", "must be >= 1")
        _check(self.alpha > 0, "lora.alpha", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
        _one_of(self.bias, "lora.bias", ("none", "all", "lora_only"))
        _check(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")
        _one_of(str(self.gradient_checkpointing).lower(), "lora.gradient_checkpointing", ("unsloth", "true", "false"))


@dataclass
class TrainConfig:
    per_device_train_batch_size: int = field(default=2, metadata={"help": "examples per micro-batch"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "micro-batches per optimizer step"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps"})
    max_steps: int = field(default=60, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    optim: str = field(default="adamw_8bit", metadata={"help": "transformers optimizer name"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "learning-rate schedule"})
    seed: int = field(default=3407, metadata={"help": "trainer seed"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N steps"})
    eval_steps: int = field(default=20, metadata={"help": "held-out loss every N steps (0: off)"})
    # Every 10 of 60 steps: a dropped Kaggle session loses minutes, not a third of the run, and a
    # checkpoint of the seed recipe's adapter and 8-bit optimizer is ~0.25 GB (two are kept).
    save_steps: int = field(default=10, metadata={"help": "checkpoint every N steps (0: off)", "fingerprint": False})
    resume: bool = field(default=True, metadata={"help": "resume an unfinished run from its latest checkpoint; false: start over from step 0", "fingerprint": False})
    wandb: Literal["auto", "online", "offline", "off"] = field(default="auto", metadata={"help": "auto (online with a key, else offline) | online | offline | off"})
    wandb_project: str = field(default="r1-medical-reasoning", metadata={"help": "W&B project"})
    padding_free: Literal["auto", "true", "false"] = field(default="auto", metadata={"help": "auto (Unsloth: yes; transformers: no) | true | false: batches without pad tokens, examples never attend to each other"})
    batch_plan: Literal["auto", "as_set"] = field(default="auto", metadata={"help": "auto: same effective batch, micro-batch sized to GPU memory | as_set: exactly the batch and accumulation above"})
    token_budget: int = field(default=0, metadata={"help": "0: auto (padding-free Unsloth on one GPU: most tokens whose activations fit) | N: at most N tokens a forward pass; a step's rows run in several passes that sum to the same gradient"})
    processes: int = field(default=1, metadata={"help": "1: train in this process | N: DDP over N GPUs (torchrun, one process per GPU, same effective batch) | 0: every visible GPU", "fingerprint": False})

    def __post_init__(self) -> None:
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "logging_steps"):
            _check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        for name in ("warmup_steps", "eval_steps", "save_steps", "processes", "token_budget"):
            _check(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        _check(0.0 < self.learning_rate < 1.0, "train.learning_rate", "must be in (0, 1)")
        _check(self.weight_decay >= 0.0, "train.weight_decay", "must be >= 0")
        _one_of(self.wandb, "train.wandb", ("auto", "online", "offline", "off"))
        _one_of(str(self.padding_free).lower(), "train.padding_free", ("auto", "true", "false"))
        _one_of(self.batch_plan, "train.batch_plan", ("auto", "as_set"))
        if self.processes > 1:  # 0 (every GPU) is checked once the GPUs are counted
            per_process_accumulation(self.per_device_train_batch_size, self.gradient_accumulation_steps, self.processes)


def per_process_accumulation(per_device: int, accumulation: int, processes: int) -> int:
    """Micro-batches each of `processes` accumulates so that the optimizer step sees
    per_device x accumulation examples, as with one process."""
    if processes < 1:
        raise ConfigError(f"train.processes: must be >= 1 once resolved, got {processes}")
    if accumulation % processes:
        fits = [str(n) for n in range(1, accumulation + 1) if accumulation % n == 0]
        counts = f"{', '.join(fits[:-1])} or {fits[-1]} processes" if len(fits) > 1 else "1 process"
        raise ConfigError(
            f"train.gradient_accumulation_steps={accumulation} does not divide among {processes} processes, so "
            f"the recipe's effective batch (train.per_device_train_batch_size={per_device} x "
            f"train.gradient_accumulation_steps={accumulation} = {per_device * accumulation}) cannot be kept: "
            f"train on {counts} (train.processes / --nproc), or set "
            f"train.gradient_accumulation_steps to a multiple of {processes}"
        )
    return accumulation // processes


@dataclass
class InferConfig:
    max_new_tokens: int = field(default=1200, metadata={"help": "tokens generated per answer at most"})
    batch_size: int = field(default=0, metadata={"help": "0: auto (the largest batch whose KV cache fits the GPU's free memory; 8 on CPU) | N: N questions generated together"})
    do_sample: bool = field(default=False, metadata={"help": "sample (True) or greedy (False)"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature when do_sample"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling when do_sample"})
    seed: int = field(default=3407, metadata={"help": "generation seed"})
    num_eval_questions: int = field(default=50, metadata={"help": "held-out questions generated besides the examples"})
    example_questions: list[str] = field(default_factory=lambda: [EXAMPLE_QUESTION], metadata={"help": "always asked"})
    stream: bool = field(default=False, metadata={"help": "print the first example's answer token by token as it is generated (in a notebook; never headless)"})
    path: Literal["auto", "unsloth", "dynamic"] = field(default="auto", metadata={"help": "auto (Unsloth's inference path where Unsloth is the backend, else transformers' generate with the dynamic KV cache) | unsloth | dynamic; both generation stages use one path"})
    unsloth_decode_graphs: bool = field(default=True, metadata={"help": "unsloth path: decode with Unsloth's CUDA graphs, the KV cache sized once for prompt + max_new_tokens (a T4's plan, 8B, 24 rows x 1,200 tokens: 414 decoded tokens/s against 327) | false: Unsloth's eager decoding"})

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "infer.max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 0, "infer.batch_size", "must be >= 0 (0: auto)")
        _one_of(self.path, "infer.path", ("auto", "unsloth", "dynamic"))
        _check(self.temperature > 0.0, "infer.temperature", "must be > 0")
        _check(0.0 < self.top_p <= 1.0, "infer.top_p", "must be in (0, 1]")
        _check(self.num_eval_questions >= 0, "infer.num_eval_questions", "must be >= 0")


PRIMARY_METRICS = ("completion_nll", "cot_nll", "answer_nll", "rouge_l", "accuracy_likelihood", "accuracy_generated")


@dataclass
class CompareConfig:
    nll_rows: int = field(default=50, metadata={"help": "held-out rows scored teacher-forced (0: all)"})
    bootstrap_samples: int = field(default=1000, metadata={"help": "resamples for confidence intervals"})
    seed: int = field(default=3407, metadata={"help": "bootstrap seed"})
    primary_metric: Literal["completion_nll", "cot_nll", "answer_nll", "rouge_l", "accuracy_likelihood", "accuracy_generated"] = field(default="completion_nll", metadata={"help": "fit metric the headline quotes: completion_nll | cot_nll | answer_nll | rouge_l; or the one accuracy that decides the verdict: accuracy_likelihood | accuracy_generated (else either accuracy can)"})
    mcq_source: str | None = field(default="GBaker/MedQA-USMLE-4-options", metadata={"help": "multiple-choice set for accuracy before/after: Hub id, local .jsonl/.json/.parquet, or r1helpers/sample-mcq (bundled 24 questions); None: correctness not measured"})
    mcq_split: str = field(default="test", metadata={"help": "split of a Hub mcq_source"})
    mcq_rows: int = field(default=0, metadata={"help": "multiple-choice questions scored by option likelihood, the first N (0: all; MedQA-USMLE's test split is 1,273 questions, about 39 T4 minutes for both models)"})
    mcq_generate: bool = field(default=True, metadata={"help": "also score the letter each model states after </think> (generation with the infer decoding); false: option likelihood only"})
    mcq_generate_rows: int = field(default=200, metadata={"help": "questions also answered by generation, the first N of the scored set (0: all); 200 is what both models answer in 30 T4 minutes at 1,200 tokens (r1helpers.evaluate.budget.rows_for_budget)"})
    mcq_more: list[str] = field(default_factory=lambda: ["openlifescienceai/medmcqa@validation", "qiaojin/PubMedQA:pqa_labeled@train"], metadata={"help": "further multiple-choice sets scored by option likelihood, each reported on its own: Hub id[:config][@split] or a local file (MedQA, MedMCQA or PubMedQA schema); one that does not load is skipped with a note"})
    mcq_more_rows: int = field(default=1000, metadata={"help": "questions of each mcq_more set, the first N (0: all); 1,000 MedMCQA questions take about 13 T4 minutes, PubMedQA's 1,000 about 27"})
    mcq_protocol_rows: int = field(default=110, metadata={"help": "questions of mcq_source answered under the dataset authors' protocol (HuatuoGPT-o1: their prompt in the chat template, temperature 0.5, top_p 0.9, 2,000 new tokens, their lenient matcher beside the strict parser), the first N (0: off); 110 is what both models answer in 30 T4 minutes"})
    mcq_protocol_max_new_tokens: int = field(default=2000, metadata={"help": "new tokens per protocol answer (the authors': 2000; the CPU profiles use fewer and the protocol table says so)"})
    contamination_span: int = field(default=64, metadata={"help": "characters a multiple-choice question must share with a training row's question to be counted as contaminated and left out of the accuracy (64, as HuatuoGPT-o1's authors checked; 0: no check)"})

    def __post_init__(self) -> None:
        _check(self.nll_rows >= 0, "compare.nll_rows", "must be >= 0")
        _check(self.bootstrap_samples >= 100, "compare.bootstrap_samples", "must be >= 100")
        _one_of(self.primary_metric, "compare.primary_metric", PRIMARY_METRICS)
        _check(self.mcq_rows >= 0, "compare.mcq_rows", "must be >= 0")
        for name in ("mcq_generate_rows", "mcq_more_rows", "mcq_protocol_rows"):
            _check(getattr(self, name) >= 0, f"compare.{name}", "must be >= 0")
        _check(self.mcq_protocol_max_new_tokens >= 1, "compare.mcq_protocol_max_new_tokens", "must be >= 1")
        _check(self.contamination_span == 0 or self.contamination_span >= 16, "compare.contamination_span",
               "must be 0 (no check) or at least 16 characters")
        _check(all(isinstance(m, str) and m.strip() for m in self.mcq_more), "compare.mcq_more",
               "must be a list of Hub ids or files")
        _check(self.mcq_source is None or bool(str(self.mcq_source).strip()), "compare.mcq_source",
               "must be a Hub id, a file, r1helpers/sample-mcq, or null")
        _check(not self.primary_metric.startswith("accuracy") or self.mcq_source is not None,
               "compare.primary_metric", f"{self.primary_metric} needs compare.mcq_source (it is null)")
        _check(self.primary_metric != "accuracy_generated" or self.mcq_generate, "compare.primary_metric",
               "accuracy_generated needs compare.mcq_generate=true")


# GGUF types: the first three written by r1helpers.export.gguf, q4_k_m by llama.cpp's quantizer.
GGUFKind = Literal["f16", "bf16", "q8_0", "q4_k_m"]
GGUF_KINDS = typing.get_args(GGUFKind)


@dataclass
class ExportConfig:
    output_dir: str | None = field(default=None, metadata={"help": "folder for the exported models (None: the run folder's export/, on Kaggle /kaggle/tmp, since /kaggle/working keeps ~19.5 GB)"})
    save_merged_16bit: bool = field(default=True, metadata={"help": "keep the adapter merged into the 16-bit base weights (made anyway, then deleted, when GGUF needs it)"})
    merged_dtype: Literal["auto", "bfloat16", "float16"] = field(default="auto", metadata={"help": "auto (float16, then the checkpoint's own type: the first whose merge passes the check) | bfloat16 | float16"})
    gguf: list[GGUFKind] = field(default_factory=lambda: ["q8_0", "q4_k_m"], metadata={"help": "GGUF types to write: f16, bf16, q8_0 (written here), q4_k_m (needs llama.cpp's quantizer, else skipped with a note)"})
    llama_quantize: str | None = field(default=None, metadata={"help": "path of llama.cpp's llama-quantize for q4_k_m (None: PATH, then Unsloth's build)"})
    check_tokens: int = field(default=16, metadata={"help": "greedy tokens compared per prompt when checking exported models"})
    hub_repo: str | None = field(default=None, metadata={"help": "Hub repo id to push to, e.g. you/r1-medical (None: write a dry run into the run folder)"})
    hub_private: bool = field(default=True, metadata={"help": "create Hub repos private"})
    push: list[Literal["adapter", "merged", "gguf"]] = field(default_factory=lambda: ["adapter", "merged", "gguf"], metadata={"help": "what to push: adapter (<repo>-lora), merged (<repo>), gguf (<repo>-GGUF)"})
    accuracy_check: Literal["auto", "on", "off"] = field(default="auto", metadata={"help": "score the merged model and each GGUF read back on compare.mcq_source (first compare.mcq_rows, option likelihood) against base + adapter; a significant drop (exact McNemar p < 0.05) fails the export. auto: on a GPU, or on the CPU while parameters x questions <= 5e9 | on | off"})
    accuracy_rows: int = field(default=200, metadata={"help": "the export's accuracy check scores at most this many of compare.mcq_source's first compare.mcq_rows questions (0: all of them); each model answers each, so 200 keeps stage 05 in minutes on a GPU while still catching a drop of ~10 points"})
    effect_kept_warn: float = field(default=0.8, metadata={"help": "warn when an export keeps less than this share of the adapter's own effect on the probe logits (1 - |exported - tuned| / |tuned - base|)"})
    effect_kept_min: float | None = field(default=None, metadata={"help": "fail the export below this share of the adapter's effect kept (None: only warn)"})

    def __post_init__(self) -> None:
        for kind in self.gguf:
            _one_of(kind, "export.gguf", GGUF_KINDS)
        for what in self.push:
            _one_of(what, "export.push", ("adapter", "merged", "gguf"))
        _one_of(self.merged_dtype, "export.merged_dtype", ("auto", "bfloat16", "float16"))
        _check(self.check_tokens >= 1, "export.check_tokens", "must be >= 1")
        _one_of(self.accuracy_check, "export.accuracy_check", ("auto", "on", "off"))
        _check(self.accuracy_rows >= 0, "export.accuracy_rows", "must be >= 0 (0: every question of the set)")
        _check(self.effect_kept_warn <= 1, "export.effect_kept_warn", "must be <= 1 (1: the whole effect)")
        _check(self.effect_kept_min is None or self.effect_kept_min <= 1, "export.effect_kept_min",
               "must be <= 1 (1: the whole effect), or null")
        _check(self.hub_repo is None or self.hub_repo.count("/") == 1, "export.hub_repo", "must look like owner/name")


@dataclass
class Config:
    profile: str = field(default="seed", metadata={"help": "recipe the defaults came from (r1helpers/recipes/<profile>.yaml)"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _field_map(cls: type, prefix: str = "") -> dict[str, tuple[type, Any]]:
    """Flatten a dataclass tree into {"train.max_steps": (owner_class, field)}."""
    out: dict[str, tuple[type, Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_field_map(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (tp, f)
    return out


FIELDS = _field_map(Config)
SECTIONS = {f.name: f.default_factory for f in fields(Config) if f.name != "profile"}  # "model": ModelConfig, ...


def resolve_key(key: str) -> str:
    """Accept a dotted key ("train.max_steps") or a unique leaf name ("max_steps")."""
    if key in FIELDS:
        return key
    matches = [k for k in FIELDS if k.split(".")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"{key}: ambiguous, say one of {matches}")
    raise ConfigError(f"{key}: no such config field (fields: {', '.join(sorted(FIELDS))})")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, Mapping) and full in SECTIONS:
            out.update(_flatten(v, f"{full}."))
        else:
            out[full] = v
    return out


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | None) -> Config:
    """Return a new Config with overrides applied; nested dicts and dotted keys both work."""
    if not overrides:
        return cfg
    data = cfg.to_dict()
    for key, value in _flatten(overrides).items():
        full = resolve_key(key)
        tp, _ = FIELDS[full]
        section, _, leaf = full.rpartition(".")
        target = data[section] if section else data
        target[leaf] = _coerce(full, tp, value)
    return from_dict(data)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build a Config from a (possibly partial) nested dict, as saved in a run folder."""
    kwargs: dict[str, Any] = {"profile": data["profile"]} if "profile" in data else {}
    for name, section in SECTIONS.items():
        values = dict(data.get(name) or {})
        unknown = sorted(k for k in values if f"{name}.{k}" not in FIELDS)
        if unknown:
            raise ConfigError(f"{name}: unknown fields {unknown}")
        kwargs[name] = section(**{k: _coerce(f"{name}.{k}", FIELDS[f"{name}.{k}"][0], v) for k, v in values.items()})
    return Config(**kwargs)


def validate(cfg: Config) -> Config:
    """`cfg` rebuilt from its values, so that an assignment in a notebook cell (`cfg.train.max_steps = 30`)
    is checked like a loaded value."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a Config, got {type(cfg).__name__}")
    return from_dict(cfg.to_dict())


def load_config(
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
) -> Config:
    """Profile defaults, then a YAML/JSON file, then explicit overrides (last wins)."""
    if profile == "auto":
        profile, _ = recipes.auto_profile()  # looked up at call time: tests replace it
    if profile not in profiles():
        raise ConfigError(f"profile: must be one of {['auto', *profiles()]} (recipes in {RECIPES}), got {profile!r}")
    cfg = apply_overrides(Config(profile=profile), _read_yaml(recipe_path(profile), "profile"))
    if config_file:
        cfg = apply_overrides(cfg, _read_yaml(Path(config_file), "config_file"))
    return apply_overrides(cfg, overrides)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what}: {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping of fields")
    loaded.pop("profile", None)
    return loaded


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def fingerprint(data: Any) -> str:
    """Stable short hash of JSON-able settings: a stage's outputs are tagged with it."""
    import hashlib

    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
