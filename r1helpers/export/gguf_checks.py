"""Each GGUF file checked: its tensors against the merged weights, its vocabulary and template, and its read-back
by transformers' GGUF loader (gguf-py's reader, independent of the writer) against the merged model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from r1helpers.export import parity
from r1helpers.export.checks import (ExportCheckError, OnModel, Probe, compare, effect_kept, float32_parameters,
                                     hf_logits, judge, load_float32, run_candidate)

# GGUF weights read back: RMS error relative to the tensor's RMS, per stored type.
WEIGHT_TOL = {"F32": 1e-6, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.02, "Q6_K": 0.04, "Q5_K": 0.08, "Q5_0": 0.08,
              "Q5_1": 0.08, "Q4_K": 0.15, "Q4_0": 0.15, "Q4_1": 0.15}


def dequantize_rows(data, qtype) -> np.ndarray:
    """gguf-py's dequantizing of some rows of a tensor, in one numpy call of the type's `dequantize_rows` rather
    than gguf-py's 16 rows at a time, which hold the GIL; the same float32 numbers."""
    import gguf

    quant = getattr(gguf.quants, qtype.name, None)  # gguf-py's class for the type: Q8_0, Q4_K, ...
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or \
            not hasattr(quant, "dequantize_rows"):
        return gguf.quants.dequantize(data, qtype)
    if hasattr(quant, "init_grid"):
        quant.init_grid()  # as gguf.quants.dequantize does first (the i-quants' lookup grids)
    return quant.dequantize_rows(data)


def gguf_weight_check(gguf_path: Path, merged_dir: Path, workers: int | None = None, reader=None) -> dict[str, Any]:
    """Dequantize every GGUF tensor, undo llama.cpp's Q/K layout and compare with the merged weights: each
    tensor's RMS error relative to its RMS, a few rows at a time on `workers` threads. `reader`: the file parsed."""
    from concurrent.futures import ThreadPoolExecutor

    import gguf
    from safetensors import safe_open

    from r1helpers.core.hardware import cpu_threads
    from r1helpers.export.gguf import read_config, unpermute_qk
    from r1helpers.export.merge import row_chunks, tensor_shapes, weight_files

    config = read_config(merged_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    reader = reader or gguf.GGUFReader(str(gguf_path))
    files = weight_files(merged_dir)
    by_gguf = {names.get_name(hf_name, try_suffixes=(".weight", ".bias")): hf_name
               for hf_name in tensor_shapes(merged_dir)}
    heads = {"q_proj.weight": n_head, "k_proj.weight": n_kv}
    pieces = []  # (tensor, HF name, HF shape, first row, end row)
    for t in reader.tensors:
        hf_name = by_gguf.get(t.name)
        if hf_name is None:
            if t.name.startswith("rope_freqs"):
                continue
            raise ExportCheckError(f"{gguf_path.name}: unexpected tensor {t.name}")
        shape = [int(d) for d in reversed(t.shape)]
        whole = len(shape) < 2 or hf_name.endswith(tuple(heads))  # Q/K are un-permuted across all their rows
        spans = [(0, shape[0])] if whole else row_chunks(shape[0], int(np.prod(shape[1:])))
        pieces += [(t, hf_name, shape, i, j) for i, j in spans]

    def squares(piece) -> tuple[float, float]:
        """(sum of squared differences, sum of squared merged weights) over the piece's rows."""
        t, hf_name, shape, i, j = piece
        data = t.data if (i, j) == (0, shape[0]) else t.data[i:j]
        w = dequantize_rows(data, t.tensor_type).reshape([j - i, *shape[1:]])
        for suffix, n in heads.items():
            if hf_name.endswith(suffix):
                w = unpermute_qk(w, n)
        with safe_open(str(files[hf_name]), framework="pt") as f:
            ref = f.get_slice(hf_name)[i:j].float().numpy().reshape(w.shape)
        diff = (w - ref).ravel()
        return float(np.dot(diff, diff)), float(np.dot(ref.ravel(), ref.ravel()))

    totals: dict[str, list[float]] = {}
    pool = ThreadPoolExecutor(cpu_threads(workers))
    try:
        for (t, *_), (sq_diff, sq_ref) in zip(pieces, pool.map(squares, pieces)):
            acc = totals.setdefault(t.name, [0.0, 0.0])
            acc[0] += sq_diff
            acc[1] += sq_ref
    finally:
        pool.shutdown(cancel_futures=True)
    worst: dict[str, float] = {}
    for t in reader.tensors:
        if t.name not in totals:
            continue
        n = max(1, int(np.prod([int(d) for d in t.shape])))
        sq_diff, sq_ref = totals[t.name]
        rel = float(np.sqrt(sq_diff / n) / max(np.sqrt(sq_ref / n), 1e-12))
        kind = t.tensor_type.name
        worst[kind] = max(worst.get(kind, 0.0), rel)
        if rel > WEIGHT_TOL.get(kind, 0.15):
            raise ExportCheckError(f"{gguf_path.name}: {t.name} ({kind}) is off by {rel:.3%} RMS "
                                   f"(allowed {WEIGHT_TOL.get(kind, 0.15):.1%})")
    missing = set(by_gguf) - set(totals)
    if missing:
        raise ExportCheckError(f"{gguf_path.name}: tensors missing: {sorted(missing)[:4]}")
    return {"tensors": len(totals), "worst_relative_rms_error_by_type": {k: round(v, 6) for k, v in worst.items()}}


def render_template(template: str, question: str, bos: str, eos: str) -> str:
    """Render a GGUF chat template as llama.cpp, LM Studio and Ollama's importers do (Jinja)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(template).render(messages=[{"role": "user", "content": question}],
                                            add_generation_prompt=True, bos_token=bos, eos_token=eos)


def gguf_metadata_check(gguf_path: Path, tokenizer, question: str, reader=None) -> dict[str, Any]:
    """Vocabulary, special ids and chat template: the GGUF must prompt exactly as training did."""
    from r1helpers.core import prompts
    from r1helpers.export.gguf import read_metadata

    md = read_metadata(reader or gguf_path)
    vocab = tokenizer.get_vocab()
    tokens = md["tokenizer.ggml.tokens"]
    wrong = [t for t, i in vocab.items() if i >= len(tokens) or tokens[i] != t]
    if wrong:
        raise ExportCheckError(f"{gguf_path.name}: {len(wrong)} tokens differ from the tokenizer's, e.g. {wrong[:3]}")
    for key, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("padding", tokenizer.pad_token_id)):
        if md.get(f"tokenizer.ggml.{key}_token_id") != tid:
            raise ExportCheckError(f"{gguf_path.name}: {key} id {md.get(f'tokenizer.ggml.{key}_token_id')} != {tid}")
    bos = prompts.adds_bos(tokenizer)
    if md.get("tokenizer.ggml.add_bos_token") is not None and bool(md["tokenizer.ggml.add_bos_token"]) != bos:
        raise ExportCheckError(f"{gguf_path.name}: add_bos_token={md['tokenizer.ggml.add_bos_token']} but the "
                               f"training tokenizer {'adds' if bos else 'adds no'} BOS")
    template = md.get("tokenizer.chat_template")
    if template != prompts.chat_template(bos=bos):
        raise ExportCheckError(f"{gguf_path.name}: tokenizer.chat_template is not the training prompt's template")
    rendered = render_template(template, question, tokenizer.bos_token, tokenizer.eos_token)
    if rendered != (tokenizer.bos_token if bos else "") + prompts.build_prompt(question):
        raise ExportCheckError(f"{gguf_path.name}: the chat template renders another prompt than training used")
    if tokenizer(rendered, add_special_tokens=False)["input_ids"] != prompts.encode_prompt(tokenizer, question):
        raise ExportCheckError(f"{gguf_path.name}: the rendered template tokenizes differently from training")
    return {"tokens": len(tokens), "pre_tokenizer": md.get("tokenizer.ggml.pre"), "adds_bos": bos,
            "chat_template": f"prompts.chat_template(bos={bos}); renders the training prompt token for token"}


# ---- transformers reads the file back ---------------------------------------------------------

def logits_on(model, probes: list[Probe], known: list[Probe], logits: list[np.ndarray]) -> list[np.ndarray]:
    """`model`'s logits over each of `probes`' sequences, taken from `logits` (over `known`'s sequences) where
    the sequence is the same, else computed."""
    have = {tuple(k.sequence): lg for k, lg in zip(known, logits)}
    return [have[tuple(p.sequence)] if tuple(p.sequence) in have else hf_logits(model, p.sequence) for p in probes]


def check_gguf_transformers(gguf_path: Path, probes: list[Probe], kind: str, parameters: int | None = None,
                            adapter_probes: list[Probe] | None = None,
                            on_model: OnModel | None = None) -> dict[str, Any]:
    """transformers' GGUF loader reads the file back (dequantized to float32): its logits and greedy tokens
    against `probes`. With `adapter_probes` (base + adapter's, with the base's logits) the result carries
    `adapter_effect_kept`, not judged here; `on_model` (if given) then gets the loaded model."""
    import logging

    logging.getLogger("transformers.modeling_gguf_pytorch_utils").setLevel(logging.ERROR)
    model = load_float32(gguf_path.parent, gguf_path.name, parameters)
    logits, greedy = run_candidate(model, probes)
    result = compare(probes, logits, greedy)
    if adapter_probes:
        result["adapter_effect_kept"] = effect_kept(adapter_probes, logits_on(model, adapter_probes, probes, logits))
    result = judge(kind, {"reader": "transformers GGUF loader", **result}, f"{gguf_path.name} (transformers)")
    if on_model is not None:
        on_model(model)
    return result


def check_one_gguf(job, path: Path, kind: str, merged: Path, probes) -> dict[str, Any]:
    """One file, parsed once for all its checks: metadata, then the weight check (in a thread) beside transformers'
    read-back; when both fail, the weights' error is raised. The read-back also gives the share of the adapter's
    effect kept (`job.judge_kept`) and, when the job scores a multiple-choice set, the accuracy parity."""
    from concurrent.futures import ThreadPoolExecutor

    import gguf

    from r1helpers.core.hardware import free_memory

    question = job.cfg.infer.example_questions[0] if job.cfg.infer.example_questions else "What is fever?"
    name = f"gguf {kind}"

    def weights() -> dict[str, Any]:
        with job.timed(f"GGUF {kind}: weight check"):
            return gguf_weight_check(path, merged, reader=reader)

    with job.timed(f"GGUF {kind}: parse and metadata check"):
        reader = gguf.GGUFReader(str(path))  # parsed once for both checks (12 s for the 8B)
        checks: dict[str, Any] = {"metadata": gguf_metadata_check(path, job.tokenizer, question, reader)}
    with ThreadPoolExecutor(1) as pool:
        weight_check = pool.submit(weights)
        try:
            if probes is not None:
                score = job.score_into(name) if hasattr(job, "score_into") else None
                with job.timed(f"GGUF {kind}: transformers read-back and logit check"):
                    checks["transformers"] = check_gguf_transformers(
                        path, probes, kind, float32_parameters(merged),
                        adapter_probes=getattr(job, "probes", None), on_model=score)
        finally:
            checks["weights"] = weight_check.result()  # its error first, if both fail
    if probes is None:
        checks["logits"] = "skipped: a float32 copy of the model does not fit in memory; weights checked instead"
    elif hasattr(job, "judge_kept"):
        what = f"{path.name} (GGUF {kind}, read back by transformers)"
        checks["adapter_effect_kept"] = job.judge_kept(name, checks["transformers"].pop("adapter_effect_kept", None),
                                                       what)
        checks["accuracy_vs_adapter"] = job.judge_parity(name, what, parity.accuracy_advice(kind))
    free_memory()
    return checks
