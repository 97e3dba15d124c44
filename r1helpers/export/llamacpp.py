"""Reading a GGUF back: each file's checks (`check_one_gguf`), and llama.cpp's side: its k-quant quantizer
(q4_k_m) and its own read-back of the file.

llama.cpp's C code runs in a child process, so a crash in C cannot take the notebook's kernel with
it: the `llama-quantize` binary or llama-cpp-python's `llama_model_quantize`, and `python -m
r1helpers.export.llamacpp llama.cpp model.gguf probes.json` for the logit check. Without either, q4_k_m
and the llama.cpp check are skipped with a note.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r1helpers.export import checks as ec
from r1helpers.export import gguf_checks, parity
from r1helpers.export.checks import ExportCheckError, Probe, compare, judge
from r1helpers.export.gguf import QUANTIZER_KINDS, GGUFError, file_type


# ---- llama.cpp's quantizer ----------------------------------------------------------------------

# Where Unsloth's GGUF path and a manual llama.cpp build leave the binary.
QUANTIZE_BINARY_SPOTS = ("~/.unsloth/llama.cpp/llama-quantize", "~/.unsloth/llama.cpp/build/bin/llama-quantize",
                         "llama.cpp/llama-quantize", "llama.cpp/build/bin/llama-quantize")


@dataclass
class Quantizer:
    """llama.cpp's k-quants: a `llama-quantize` binary, or llama_model_quantize via llama-cpp-python."""

    how: str  # "binary" | "llama-cpp-python"
    where: str

    def quantize(self, src: Path, dst: Path, kind: str) -> None:
        if kind not in QUANTIZER_KINDS:
            raise GGUFError(f"{kind}: the quantizer makes {QUANTIZER_KINDS}")
        if self.how == "binary":
            cmd = [self.where, str(src), str(dst), kind.upper(), str(os.cpu_count() or 1)]
        else:  # a child process: a crash in C must not take the notebook's kernel with it
            cmd = [sys.executable, "-c", _BINDING_SCRIPT, str(src), str(dst), str(int(file_type(kind)))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not dst.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
            raise GGUFError(f"llama.cpp quantizer ({self.how}) failed for {kind}: " + " | ".join(tail))


_BINDING_SCRIPT = """
import ctypes, os, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = os.cpu_count() or 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def find_quantizer(configured: str | None = None) -> tuple[Quantizer | None, str]:
    """The quantizer to use and a sentence saying which, or why there is none."""
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return Quantizer("binary", str(path)), f"llama-quantize at {path} (export.llama_quantize)"
        return None, f"export.llama_quantize={configured!r} is not an executable file"
    found = shutil.which("llama-quantize")
    if found:
        return Quantizer("binary", found), f"llama-quantize on PATH ({found})"
    for spot in QUANTIZE_BINARY_SPOTS:
        path = Path(spot).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return Quantizer("binary", str(path.resolve())), f"llama-quantize at {path.resolve()}"
    try:
        import llama_cpp

        if hasattr(llama_cpp, "llama_model_quantize"):
            return Quantizer("llama-cpp-python", llama_cpp.__file__), \
                f"llama.cpp's quantizer through llama-cpp-python {llama_cpp.__version__}"
    except Exception:  # an installed but broken build is as good as none
        pass
    return None, ("no llama.cpp quantizer: put `llama-quantize` on PATH, set export.llama_quantize, or "
                  "pip install llama-cpp-python")


# ---- llama.cpp side (child process) ---------------------------------------------------------------

def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def check_gguf_llama_cpp(gguf_path: Path, probes: list[Probe], kind: str, prompt_texts: list[str],
                         timeout: float = 1800) -> dict[str, Any]:
    """llama.cpp itself loads the file, tokenizes the prompts and decodes greedily."""
    request = {"gguf": str(gguf_path), "prompts": [p.prompt_ids for p in probes], "texts": prompt_texts,
               "sequences": [p.sequence for p in probes], "n": len(probes[0].greedy)}
    out_file = gguf_path.with_suffix(".check.npz")
    try:
        proc = subprocess.run([sys.executable, "-m", "r1helpers.export.llamacpp", "llama.cpp", json.dumps(request),
                               str(out_file)], capture_output=True, text=True, timeout=timeout, env=_child_env())
        if proc.returncode != 0:
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise ExportCheckError(f"{gguf_path.name}: llama.cpp exited with {proc.returncode} while reading it "
                                   f"({tail or 'no output'}); if its build is at fault, reinstall llama-cpp-python")
        data = np.load(out_file)
        logits = [data[f"logits{i}"] for i in range(len(probes))]
        greedy = [data[f"greedy{i}"].tolist() for i in range(len(probes))]
        tokens = [data[f"tokens{i}"].tolist() for i in range(len(probes))]
    finally:
        out_file.unlink(missing_ok=True)
    result = {"reader": "llama.cpp (llama-cpp-python)", **compare(probes, logits, greedy)}
    result["tokenization_identical"] = all(t == p.prompt_ids for t, p in zip(tokens, probes))
    if not result["tokenization_identical"]:
        raise ExportCheckError(f"{gguf_path.name}: llama.cpp tokenizes the training prompt differently "
                               "from the Hugging Face tokenizer")
    return judge(kind, result, f"{gguf_path.name} (llama.cpp)")


def _child_env() -> dict[str, str]:
    """The child must import this r1helpers even when it is a checkout on sys.path, not an install."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _llama_cpp_child(request: dict[str, Any], out_file: str) -> None:
    """llama.cpp's own greedy tokens, and its logits over the reference's sequence (prompt + reference greedy).

    Logits are taken on the reference's tokens, not llama.cpp's: once a quantized file picks
    another token, logits over its own continuation would compare different texts.
    A fresh context per pass: reset() alone left cached positions that changed later logits.
    """
    import llama_cpp

    n_ctx = max(len(p) for p in request["prompts"]) + request["n"] + 8

    def fresh():
        return llama_cpp.Llama(model_path=request["gguf"], n_ctx=n_ctx, logits_all=True, verbose=False,
                               n_threads=os.cpu_count() or 1, n_gpu_layers=0)

    arrays: dict[str, np.ndarray] = {}
    for i, (ids, text) in enumerate(zip(request["prompts"], request["texts"])):
        llm = fresh()
        arrays[f"tokens{i}"] = np.asarray(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        llm.eval(ids)
        greedy: list[int] = []
        for _ in range(request["n"]):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        arrays[f"greedy{i}"] = np.asarray(greedy)
        llm = fresh()
        llm.eval(request["sequences"][i])
        arrays[f"logits{i}"] = np.asarray(llm.scores[: llm.n_tokens], dtype=np.float32)
    np.savez(out_file, **arrays)


def check_one_gguf(job, path: Path, kind: str, merged: Path, probes) -> dict[str, Any]:
    """One file, parsed once for all its checks: metadata, then the weight check beside transformers'
    read-back (both on the CPU, threaded); when both fail, the weights' error is raised. The read-back model
    also gives the share of the adapter's effect the file keeps (against base + adapter, `job.probes`) and, when
    the job scores a multiple-choice set, its answers, judged against the adapter's (`job.judge_parity`)."""
    from concurrent.futures import ThreadPoolExecutor

    from r1helpers.core.hardware import free_memory

    question = job.cfg.infer.example_questions[0] if job.cfg.infer.example_questions else "What is fever?"
    name = f"gguf {kind}"

    def weights() -> dict[str, Any]:
        with job.timed(f"GGUF {kind}: weight check"):
            return gguf_checks.gguf_weight_check(path, merged)

    with contextlib.ExitStack() as reading:
        with job.timed(f"GGUF {kind}: parse and metadata check"):
            reading.enter_context(gguf_checks.shared_gguf_reader(path))  # parsed once for all the checks (12 s for the 8B)
            checks: dict[str, Any] = {"metadata": gguf_checks.gguf_metadata_check(path, job.tokenizer, question)}
        with ThreadPoolExecutor(1) as pool:
            weight_check = pool.submit(weights)
            try:
                if probes is not None:
                    score = job.score_into(name) if hasattr(job, "score_into") else None
                    with job.timed(f"GGUF {kind}: transformers read-back and logit check"):
                        checks["transformers"] = gguf_checks.check_gguf_transformers(
                            path, probes, kind, ec.float32_parameters(merged),
                            adapter_probes=getattr(job, "probes", None), on_model=score)
            finally:
                checks["weights"] = weight_check.result()  # its error first, if both fail
    if probes is None:
        checks["logits"] = "skipped: a float32 copy of the model does not fit in memory; weights checked instead"
        return checks
    if hasattr(job, "judge_kept"):
        what = f"{path.name} (GGUF {kind}, read back by transformers)"
        checks["adapter_effect_kept"] = job.judge_kept(name, checks["transformers"].pop("adapter_effect_kept", None),
                                                       what)
        checks["accuracy_vs_adapter"] = job.judge_parity(name, what, parity.accuracy_advice(kind))
    free_memory()
    if llama_cpp_available():
        with job.timed(f"GGUF {kind}: llama.cpp logit check"):
            checks["llama.cpp"] = check_gguf_llama_cpp(path, probes, kind, job.prompt_texts)
    else:
        checks["llama.cpp"] = "skipped: llama-cpp-python is not installed (pip install llama-cpp-python)"
    return checks


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "llama.cpp":
        _llama_cpp_child(json.loads(argv[1]), argv[2])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
