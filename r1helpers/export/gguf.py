"""Write a merged Llama checkpoint as GGUF, offline, with gguf-py.

Written here because llama.cpp's `convert_hf_to_gguf.py` is a script of its repository, not an installable package,
so Kaggle's offline machines do not have it. It converts what this project trains: Llama with a byte-level BPE
tokenizer (any other is refused, naming the script), as the script does, one tensor at a time so an 8B model never
sits in memory. q4_k_m comes from llama.cpp's `llama-quantize` binary when one is found (`find_quantizer`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from r1helpers.core.hardware import cpu_threads
from r1helpers.export.merge import tensor_shapes, weight_files


LOCAL_KINDS, QUANTIZER_KINDS = ("f16", "bf16", "q8_0"), ("q4_k_m",)  # written by gguf-py here; by llama.cpp
# Bytes per parameter, for the free-space check. q4_k_m mixes Q4_K and Q6_K: 4.92 GB for Llama-3-8B's 8.03 B.
BYTES_PER_PARAM = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.62}


class GGUFError(RuntimeError):
    """The checkpoint cannot be written as GGUF by this converter, or a written file is wrong."""


def file_name(stem: str, kind: str) -> str:
    return f"{stem}-{kind.upper()}.gguf"


def source_kind(merged_dtype: str) -> str:
    """q4_k_m is quantized from an unquantized GGUF of the merged model's own type: no extra rounding."""
    return "bf16" if merged_dtype == "bfloat16" else "f16"


def modelfile(gguf_name: str) -> str:
    """An Ollama Modelfile for `gguf_name` (same folder) with the training prompt as its template: Ollama
    does not run the Jinja template stored in a GGUF."""
    from r1helpers.core import prompts

    head, _, tail = prompts.build_prompt("\x00").partition("\x00")
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{{{{ if .Prompt }}}}{head}{{{{ .Prompt }}}}{tail}{{{{ end }}}}{{{{ .Response }}}}"""\n')


# ---- reading the merged checkpoint ---------------------------------------------------------------

def read_config(model_dir: Path) -> dict[str, Any]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise GGUFError(f"{model_dir}: model_type {config.get('model_type')!r}; this converter writes Llama only "
                        "(use llama.cpp's convert_hf_to_gguf.py for other architectures)")
    return config


def rope_params(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in `rope_parameters`; older configs in rope_theta/rope_scaling."""
    params = dict(config.get("rope_scaling") or {})
    params.update(config.get("rope_parameters") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_factors(config: dict[str, Any]) -> np.ndarray | None:
    """Llama 3.1's frequency scaling, as llama.cpp reads it: one factor per rotary pair.

    Same arithmetic as convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors.
    """
    rp = rope_params(config)
    if rp["rope_type"] in ("default", None):
        return None
    if rp["rope_type"] != "llama3":
        raise GGUFError(f"rope_type {rp['rope_type']!r} is not supported by this converter (default and llama3 are)")
    dim = head_dim(config)
    freqs = 1.0 / (rp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rp.get("factor", 8.0), rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_len = rp.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def iter_tensors(model_dir: Path, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """One float32 array at a time, file by file, in the order asked."""
    from safetensors import safe_open

    files = weight_files(model_dir)
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for name in names:
            if files[name] not in handles:
                handles[files[name]] = stack.enter_context(safe_open(str(files[name]), framework="pt"))
            yield name, handles[files[name]].get_tensor(name).float().numpy()


# ---- tensors ---------------------------------------------------------------------------------------

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head; as convert_hf_to_gguf."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def ggml_type(kind: str, shape: tuple[int, ...]):
    """Norms and other 1-D tensors stay F32 (llama.cpp requires it); rows Q8_0 cannot split go F16."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return T.F32
    if kind == "q8_0":
        return T.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[kind]


def file_type(kind: str):
    import gguf

    F = gguf.LlamaFileType
    return {"f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0, "q4_k_m": F.MOSTLY_Q4_K_M}[kind]


def nbytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


@dataclass
class PlannedTensor:
    gguf_name: str
    hf_name: str | None  # None: computed here (rope_freqs)
    shape: tuple[int, ...]
    qtype: Any
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def plan_tensors(model_dir: Path, config: dict[str, Any], kind: str) -> list[PlannedTensor]:
    import gguf

    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    plan: list[PlannedTensor] = []
    factors = rope_factors(config)
    if factors is not None:
        plan.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None,
                                  factors.shape, gguf.GGMLQuantizationType.F32))
    for hf_name, shape in tensor_shapes(model_dir).items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise GGUFError(f"{hf_name}: no llama.cpp name for this tensor")
        transform = None
        if hf_name.endswith("self_attn.q_proj.weight"):
            transform = lambda w, h=n_head: permute_qk(w, h)  # noqa: E731
        elif hf_name.endswith("self_attn.k_proj.weight"):
            transform = lambda w, h=n_kv: permute_qk(w, h)  # noqa: E731
        plan.append(PlannedTensor(target, hf_name, shape, ggml_type(kind, shape), transform))
    return plan


# ---- tokenizer ----------------------------------------------------------------------------------

def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf marks <|...|>-style added tokens CONTROL even when not flagged special."""
    return any(token.startswith(a) and token.endswith(b) for a, b in (("<|", "|>"), ("<｜", "｜>")))


def _byte_level(step: dict[str, Any], regex: bool) -> bool:
    return step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == regex \
        and not step.get("add_prefix_space", False)


def pretokenizer_name(tok_json: dict[str, Any]) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for this tokenizer.json's pre-tokenizer, else GGUFError: "llama-bpe"
    (Llama 3's split regex, then byte-level), "smollm" (each digit alone, then GPT-2's byte-level) or "gpt2"."""
    from r1helpers.modeling.tiny import LLAMA3_SPLIT

    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    norm = tok_json.get("normalizer") or {}
    plain = not norm or (norm.get("type") == "Sequence" and not norm.get("normalizers"))
    name = None
    if tok_json.get("model", {}).get("type") == "BPE" and plain:
        if len(steps) == 2 and steps[0].get("type") == "Split" and _byte_level(steps[1], regex=False) \
                and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
            name = "llama-bpe"
        elif len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") \
                and _byte_level(steps[1], regex=True):
            name = "smollm"
        elif len(steps) == 1 and _byte_level(steps[0], regex=True):
            name = "gpt2"
    if name is None:
        raise GGUFError("the tokenizer is not a byte-level BPE this converter can name for llama.cpp (Llama 3's "
                        "'llama-bpe', SmolLM's 'smollm' or GPT-2's 'gpt2' pre-tokenizer); convert it with llama.cpp's "
                        "convert_hf_to_gguf.py (https://github.com/ggml-org/llama.cpp), which recognises many more.")
    return name


def adds_bos(tok_json: dict[str, Any]) -> bool:
    """Whether the tokenizer.json's post-processor puts a special token before the text (BOS)."""
    post = tok_json.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return False


def vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types by id, padded to the model's vocab size as convert_hf_to_gguf does."""
    import gguf

    tok_json = json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    pretokenizer_name(tok_json)
    by_id = {i: t for t, i in tok_json["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok_json.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if max(by_id) >= vocab_size:
        raise GGUFError(f"tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    T = gguf.TokenType

    def token_type(i: int):
        if i not in by_id:
            return T.UNUSED
        if i not in added:
            return T.NORMAL
        return T.CONTROL if added[i].get("special") or _looks_special(by_id[i]) else T.USER_DEFINED

    return [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)], [int(token_type(i)) for i in range(vocab_size)]


# ---- writing ------------------------------------------------------------------------------------

def _add_metadata(w, config: dict[str, Any], kind: str, name: str, base_model: str | None) -> None:
    import gguf

    w.add_name(name)
    w.add_type("model")
    if base_model:
        from r1helpers.core.recipes import SMOLLM2_MODEL, TINY_MODEL
        from r1helpers.modeling.local import model_origin

        hub_id = model_origin(base_model).hub_id  # a local id names its Hub original, if it has one
        w.add_base_model_count(1)
        w.add_base_model_name(0, hub_id or base_model)
        if hub_id or ("/" in base_model and not Path(base_model).exists()
                      and base_model not in (TINY_MODEL, SMOLLM2_MODEL)):
            w.add_base_model_repo_url(0, f"https://huggingface.co/{hub_id or base_model}")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(int(file_type(kind)))
    w.add_vocab_size(config["vocab_size"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(float(rope_params(config)["rope_theta"]))
    w.add_rope_dimension_count(head_dim(config))
    if config.get("head_dim") and config["head_dim"] != config["hidden_size"] // config["num_attention_heads"]:
        w.add_key_length(config["head_dim"])
        w.add_value_length(config["head_dim"])


def _add_tokenizer(w, model_dir: Path, config: dict[str, Any], chat_template: str | None) -> None:
    import gguf

    tok_json = json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    tokens, types = vocab(model_dir, config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pretokenizer_name(tok_json))
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise GGUFError(f"{model_dir}/tokenizer.json has no BPE merges")
    # llama.cpp adds BOS only where the file says so; say it as the training tokenizer does.
    special.add_special_token["bos"] = adds_bos(tok_json)
    special.add_special_token.setdefault("eos", False)
    if chat_template is not None:
        special.chat_template = chat_template
    special.add_to_gguf(w, quiet=True)


def quantized_in_order(plan: list[PlannedTensor], arrays: Iterator[tuple[str, np.ndarray]], factors: np.ndarray | None,
                       workers: int) -> Iterator[np.ndarray]:
    """Each planned tensor transformed and quantized, in plan order, a tensor per thread, `workers` tensors ahead
    (at most `workers` + 1 held). q8_0 of the 8B: ~107 s in one thread, 38.6-45.0 s on the H200 machine's CPU."""
    import gguf

    def job(t: PlannedTensor, data: np.ndarray) -> np.ndarray:
        if t.transform is not None:
            data = t.transform(data)
        return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), t.qtype)

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for t in plan:
            data = factors if t.hf_name is None else next(arrays)[1]
            pending.append(pool.submit(job, t, data))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, kind: str, name: str | None = None,
               base_model: str | None = None, chat_template: str | None = None, workers: int | None = None) -> Path:
    """Convert a merged 16-bit Llama folder into one GGUF file of type f16, bf16 or q8_0, with
    `chat_template` (export passes the training prompt's); `workers` threads quantize, the file is the same."""
    import gguf

    if kind not in LOCAL_KINDS:
        raise GGUFError(f"{kind}: written here are {LOCAL_KINDS}; {QUANTIZER_KINDS} come from llama.cpp's quantizer")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    plan = plan_tensors(model_dir, config, kind)
    w = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_metadata(w, config, kind, name or model_dir.name, base_model)
    _add_tokenizer(w, model_dir, config, chat_template)
    for t in plan:
        w.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
    w.write_header_to_file(out_path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    arrays = iter_tensors(model_dir, [t.hf_name for t in plan if t.hf_name is not None])
    for data in quantized_in_order(plan, arrays, rope_factors(config), cpu_threads(workers)):
        w.write_tensor_data(data)
    w.close()
    return out_path


# ---- llama.cpp's quantizer (q4_k_m) ---------------------------------------------------------------

# Where Unsloth's GGUF path and a manual llama.cpp build leave the binary.
QUANTIZE_BINARY_SPOTS = ("~/.unsloth/llama.cpp/llama-quantize", "~/.unsloth/llama.cpp/build/bin/llama-quantize",
                         "llama.cpp/llama-quantize", "llama.cpp/build/bin/llama-quantize")


def find_quantizer(configured: str | None = None) -> tuple[str | None, str]:
    """The path of llama.cpp's `llama-quantize` (export.llama_quantize, PATH, Unsloth's build) and a sentence
    saying where it was found, or (None, why there is none)."""
    spots = [configured] if configured else [shutil.which("llama-quantize"), *QUANTIZE_BINARY_SPOTS]
    for spot in filter(None, spots):
        path = Path(spot).expanduser().resolve()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path), f"llama-quantize at {path}"
    if configured:
        return None, f"export.llama_quantize={configured!r} is not an executable file"
    return None, "no llama.cpp quantizer: put `llama-quantize` on PATH or set export.llama_quantize"


def quantize(binary: str, src: Path, dst: Path, kind: str) -> None:
    """llama.cpp's k-quants, in a child process: a crash in C cannot take the notebook's kernel with it."""
    if kind not in QUANTIZER_KINDS:
        raise GGUFError(f"{kind}: the quantizer makes {QUANTIZER_KINDS}")
    proc = subprocess.run([binary, str(src), str(dst), kind.upper(), str(os.cpu_count() or 1)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not dst.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        raise GGUFError(f"llama-quantize failed for {kind}: " + " | ".join(tail))


def write_gguf_files(model_dir: Path, folder: Path, kinds: list[str], stem: str, base_model: str | None = None,
                     chat_template: str | None = None, quantizer=None,
                     timed=None) -> dict[str, Path]:
    """Each type of `kinds` as `<folder>/<stem>-<KIND>.gguf`, and an Ollama `Modelfile` for the last. q4_k_m comes
    from `quantizer` (a llama-quantize path), from the unquantized file of the merged model's type (written for it
    and deleted when not in `kinds`; list q4_k_m after it). `timed(step)`: a context manager timing each write."""
    timed = timed or (lambda step: contextlib.nullcontext())
    source = source_kind(json.loads((Path(model_dir) / "config.json").read_text()).get("dtype", "float16"))
    files: dict[str, Path] = {}
    for kind in kinds:
        target = Path(folder) / file_name(stem, kind)
        if kind in QUANTIZER_KINDS:
            src = files.get(source) or Path(folder) / f".{file_name(stem, source)}"
            if not src.is_file():
                with timed(f"GGUF {source}: write (source of {kind})"):
                    write_gguf(model_dir, src, source, stem, base_model, chat_template)
            with timed(f"GGUF {kind}: llama.cpp quantize"):
                quantize(quantizer, src, target, kind)
            if source not in files:
                src.unlink()
        else:
            with timed(f"GGUF {kind}: write"):
                write_gguf(model_dir, target, kind, stem, base_model, chat_template)
        print(f"wrote {target.name} ({target.stat().st_size / 2**20:.1f} MiB)", flush=True)
        files[kind] = target
    if files:
        (Path(folder) / "Modelfile").write_text(modelfile(files[kinds[-1]].name))
    return files


# ---- reading back ----------------------------------------------------------------------------------

def read_metadata(path) -> dict[str, Any]:
    """The GGUF's key-value fields as plain Python values (token lists included); `path` may be a parsed reader."""
    from gguf import GGUFReader

    reader = path if isinstance(path, GGUFReader) else GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}
