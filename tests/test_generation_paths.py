"""Generation paths: which one each machine gets and why, that each gives the answers of plain batch-1
generation, and that a failing path falls back with its reason recorded.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_generation_paths.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from r1helpers.core import prompts
from r1helpers.core.config import load_config
from r1helpers.core.recipes import TINY_MODEL
from r1helpers.core.runs import Run, read_jsonl, write_jsonl_atomic
from r1helpers.data_sources import load_sample_rows
from r1helpers.inference import paths
from r1helpers.inference.generate import generate, plan_for_model
from r1helpers.inference.paths import choose_generation_path, fallback_path
from r1helpers.modeling import load
from r1helpers.inference import choose
from r1helpers.workflow import compare_stage, data_stage, generate_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the tools are scripts there, not in r1helpers

KV_ROW_8B = 128 * 1024 * 1400 / 2**30  # one row of the 8B's cache at 200 + 1200 tokens, ~0.17 GiB
W16_8B = 15.0
H200 = dict(on_gpu=True, gpu_gib=139.0, used_gib=0.6, weights_16bit_gib=W16_8B, kv_gib_per_row=KV_ROW_8B, rows=51)
T4 = dict(on_gpu=True, gpu_gib=15.0, used_gib=0.4, weights_16bit_gib=W16_8B, kv_gib_per_row=KV_ROW_8B, rows=51)
FOUR_BIT = dict(dtype="bfloat16", load_in_4bit=True)


# ---- the choice ------------------------------------------------------------------------------------

def test_large_gpu_takes_16bit_weights_with_a_static_cache_whatever_the_backend():
    """Measured on the H200 (8B, 51 rows x 600 tokens, Unsloth imported): the static cache 1,857 decoded
    tokens/s, Unsloth's path 690: auto takes the static cache where 16-bit weights and the rows fit."""
    for backend in ("unsloth", "transformers"):
        p = choose_generation_path("auto", backend=backend, **FOUR_BIT, **H200)
        assert (p.path, p.backend, p.load_in_4bit, p.dtype) == ("static_16bit", "transformers", False, "bfloat16")
        assert p.cache_implementation == "static" and p.weights == "bfloat16" and p.kv_slack_tokens == 0
        assert "fit in" in p.reason and "unmerged" in p.reason and "1,857" in p.reason


def test_t4_takes_unsloth_else_the_dynamic_cache_on_4bit_weights():
    p = choose_generation_path("auto", backend="unsloth", dtype="float16", load_in_4bit=True, **T4)
    assert (p.path, p.backend, p.load_in_4bit, p.dtype) == ("unsloth", "unsloth", True, "float16")
    assert p.cache_implementation is None and p.kv_slack_tokens == paths.UNSLOTH_KV_INCREMENT
    assert any(n.startswith("static_16bit:") and "do not fit" in n for n in p.passed_over)
    q = choose_generation_path("auto", backend="transformers", dtype="float16", load_in_4bit=True, **T4)
    assert (q.path, q.backend, q.load_in_4bit) == ("dynamic", "transformers", True)
    assert q.weights == "4-bit nf4, float16 compute"


def test_16bit_needs_room_for_min_rows_of_cache():
    l4 = {**H200, "gpu_gib": 22.0}  # 16-bit weights fit, but not 32 rows of cache beside them
    assert choose_generation_path("auto", backend="unsloth", **FOUR_BIT, **l4).path == "unsloth"
    assert choose_generation_path("auto", backend="transformers", **FOUR_BIT, **{**l4, "rows": 4}).path == "static_16bit"
    assert choose_generation_path("auto", backend="transformers", **FOUR_BIT, **l4).path == "dynamic"
    # asked for explicitly, one row beside the weights is enough
    assert choose_generation_path("static_16bit", backend="unsloth", **FOUR_BIT, **l4).path == "static_16bit"
    told = choose_generation_path("static_16bit", backend="unsloth", **FOUR_BIT, **T4)
    assert told.path == "unsloth" and "not even one row" in told.passed_over[0]


def test_cpu_and_explicit_requests():
    cpu = dict(on_gpu=False, backend="transformers", dtype="float32", load_in_4bit=False)
    p = choose_generation_path("auto", **cpu)
    assert (p.path, p.dtype, p.load_in_4bit) == ("dynamic", "float32", False) and "no GPU" in p.reason
    s = choose_generation_path("static_16bit", **cpu)
    assert (s.path, s.dtype, s.cache_implementation) == ("static_16bit", "float32", "static")
    u = choose_generation_path("unsloth", **cpu)
    assert u.path == "dynamic" and "needs an NVIDIA GPU" in u.passed_over[0]
    d = choose_generation_path("dynamic", backend="unsloth", **FOUR_BIT, **H200)
    assert (d.path, d.backend, d.load_in_4bit) == ("dynamic", "transformers", True)
    t = choose_generation_path("unsloth", backend="transformers", **FOUR_BIT, **H200)
    assert t.path == "dynamic" and "backend is transformers" in t.passed_over[0]
    with pytest.raises(ValueError):
        choose_generation_path("fastest", **cpu)


def test_fallbacks_keep_the_reason_and_end_at_dynamic():
    static = choose_generation_path("static_16bit", backend="unsloth", **FOUR_BIT, **H200)
    same = fallback_path(static, "BackendCompilerFailed: boom", failed_at="generate", backend="unsloth", **FOUR_BIT)
    assert (same.path, same.load_in_4bit, same.dtype) == ("dynamic", False, "bfloat16")
    assert paths.same_weights(static, same)
    assert "static_16bit (bfloat16) failed to generate: BackendCompilerFailed: boom" in same.passed_over[-1]
    unsl = fallback_path(static, "OutOfMemoryError", failed_at="load", backend="unsloth", **FOUR_BIT)
    assert unsl.path == "unsloth" and unsl.load_in_4bit and not paths.same_weights(static, unsl)
    dyn = fallback_path(unsl, "ImportError", failed_at="generate", backend="unsloth", **FOUR_BIT)
    assert (dyn.path, dyn.backend, dyn.load_in_4bit) == ("dynamic", "transformers", True) and len(dyn.passed_over) == 2
    assert fallback_path(dyn, "x", failed_at="generate", backend="unsloth", **FOUR_BIT) is None
    assert fallback_path(static, "x", failed_at="load", backend="transformers", **FOUR_BIT).path == "dynamic"


def test_gpu_cap_from_the_environment():
    assert paths.gpu_cap_gib({}) is None and paths.gpu_cap_gib({paths.GPU_GIB_ENV: " 15 "}) == 15.0
    for bad in ("fifteen", "0"):
        with pytest.raises(ValueError, match=paths.GPU_GIB_ENV):
            paths.gpu_cap_gib({paths.GPU_GIB_ENV: bad})


def test_static_cache_compiles_under_torch_defaults_not_unsloths():
    """Unsloth's import sets suppress_errors=True and recompile_limit=1024 (among others) for the whole process;
    the static cache's decoding step compiles under torch's defaults, and Unsloth's values come back after."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    from r1helpers.inference.generate import changed_compile_settings, torch_compile_defaults

    assert changed_compile_settings() == {}
    with dynamo.patch(suppress_errors=True, recompile_limit=1024), inductor.patch({"cuda.use_fast_math": True}):
        assert changed_compile_settings() == {"dynamo.suppress_errors": (True, False),
                                              "dynamo.recompile_limit": (1024, 8),
                                              "inductor.cuda.use_fast_math": (True, False)}
        with torch_compile_defaults():
            assert changed_compile_settings() == {}
            assert dynamo.recompile_limit == 8 and dynamo.suppress_errors is False
        assert dynamo.recompile_limit == 1024 and inductor.cuda.use_fast_math is True
    assert changed_compile_settings() == {}


# ---- the same answers on every path ------------------------------------------------------------------

PLAIN = dict(max_seq_length=1024, load_in_4bit=False, dtype="float32", backend="transformers")
NEW = 24


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    """The tiny model in fp32 with a LoRA whose B is not zero, so the adapter changes the answers."""
    from peft import LoraConfig, get_peft_model

    base = load.load_base(TINY_MODEL, **PLAIN)
    model = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    return model.eval(), base.tokenizer


def plain_batch_one(model, tok, question: str) -> list[int]:
    """model.generate on one unpadded prompt with the dynamic cache: the reference."""
    enc = tok(prompts.build_prompt(question), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=NEW, do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    return ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids


@pytest.mark.parametrize("cache", [None, "static"])
@pytest.mark.slow
def test_each_path_gives_the_answers_of_plain_batch_one_generation(lora_model, cache):
    model, tok = lora_model
    questions = [r["Question"] for r in load_sample_rows()[:5]]
    reference = [tok.decode(plain_batch_one(model, tok, q), skip_special_tokens=True) for q in questions]
    stats: dict = {}
    got = generate(model, tok, questions, max_new_tokens=NEW, batch_size=3, progress=False,
                   cache_implementation=cache, stats=stats)
    assert [r["generated"] for r in got] == reference
    assert len({r["generated"] for r in got}) == len(questions), "distinct answers, so the check means something"
    # The static cache fills the short last batch so the compiled step keeps one shape; the dynamic one does not.
    assert stats["batches"] == ([3, 3] if cache == "static" else [3, 2])


@pytest.mark.slow
def test_batch_zero_plans_from_the_machine(lora_model):
    model, tok = lora_model
    questions = [r["Question"] for r in load_sample_rows()[:10]]
    plan = plan_for_model(model, tok, questions, max_new_tokens=NEW)
    assert plan.batch_size == 8 and "No GPU" in plan.reason
    on_gpu = plan_for_model(model, tok, questions, max_new_tokens=1200, gpu_gib=15.0, used_gib=14.0)
    assert on_gpu.batch_size >= 1 and on_gpu.tokens_per_row > 1200
    stats: dict = {}
    generate(model, tok, questions, max_new_tokens=2, batch_size=0, progress=False, stats=stats)
    assert stats["batches"] == [8, 2]


# ---- the stages --------------------------------------------------------------------------------------

SMALL = {"infer.max_new_tokens": 6, "infer.num_eval_questions": 4, "data.train_rows": 8, "data.eval_rows": 4,
         "model.max_seq_length": 256, "data.overlong": "truncate", "compare.mcq_rows": 3}


@pytest.fixture(scope="module")
def small_cfg():
    return load_config("cpu", SMALL)


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, tiny_model_dir, tokenizer, small_cfg):
    run = Run.open(tmp_path_factory.mktemp("paths") / "run")
    return run, data_stage.prepare(small_cfg, run, tokenizer)


@pytest.mark.slow
def test_baseline_records_the_path_and_the_plan(small_cfg, prepared_run, capsys):
    run, prepared = prepared_run
    records = generate_stage.baseline(small_cfg, run, prepared, force=True)
    m = run.read_manifest("baseline")
    # The example and 4 held-out questions, and the 3 multiple-choice questions answered in the same batch.
    assert len(records) == 5 and m["mcq_questions"] == 3
    assert m["generation_path"] == "dynamic" and m["batch_size"] == 8
    assert m["tokens_per_second"] > 0 and m["peak_gpu_reserved_gib"] is None
    g = m["generation"]
    assert g["device"] == "cpu" and g["weights"] == "float32" and "No GPU" in g["plan"]["reason"]
    assert g["stats"]["batches"] == [8]
    mcq = read_jsonl(run.path("baseline_mcq"))
    assert [r["id"] for r in mcq] == [r["id"] for r in generate_stage.mcq_rows(small_cfg)]
    assert all(r["new_tokens"] >= 1 and isinstance(r["generated"], str) for r in mcq)
    assert str(run.path("baseline_mcq")) in m["must_exist"]
    out = capsys.readouterr().out
    assert "baseline: generation path dynamic" in out
    assert "baseline: batch 8 for 8 questions (5 held-out, 3 multiple-choice)" in out
    assert compare_stage.decoding_used(run)["baseline"]["generation_path"] == "dynamic"


def test_finetuned_follows_the_baseline_path(small_cfg, prepared_run):
    run, prepared = prepared_run
    static = choose_generation_path("static_16bit", on_gpu=False, backend="transformers", dtype="float32",
                                    load_in_4bit=False)
    write_jsonl_atomic(run.path("baseline"), [{"id": "x"}])
    run.write_manifest(small_cfg, "baseline", generation_path="static_16bit",
                       generation={**static.record(), "device": "cpu"})
    followed = choose.generation_path(small_cfg, run, "finetuned")
    assert followed.path == "static_16bit" and "the path baseline took" in followed.reason
    assert choose.generation_path(small_cfg, run, "baseline").path == "dynamic", "auto decides afresh for itself"
    forced = load_config("cpu", {**{"infer.path": "dynamic"}})
    assert choose.generation_path(forced, run, "finetuned").path == "dynamic"


@pytest.mark.slow
def test_a_failing_static_path_falls_back_with_the_reason(small_cfg, prepared_run, capsys):
    run, prepared = prepared_run
    cfg = load_config("cpu", {"infer.path": "static_16bit", "infer.max_new_tokens": 6, "infer.num_eval_questions": 4,
                              "data.train_rows": 8, "data.eval_rows": 4, "model.max_seq_length": 256,
                              "data.overlong": "truncate", "compare.mcq_rows": 3})
    path = choose.generation_path(cfg, run, "baseline")
    assert path.path == "static_16bit"
    loaded, path = choose.load_for_generation(cfg, path)
    real = loaded.model.generate
    calls = []

    def no_static(**kwargs):
        calls.append(kwargs.get("cache_implementation"))
        if kwargs.get("cache_implementation") == "static":
            raise RuntimeError("compiling the decoding step failed")
        return real(**kwargs)

    loaded.model.generate = no_static
    records = generate_stage.baseline(cfg, run, prepared, loaded=loaded, force=True)
    m = run.read_manifest("baseline")
    assert len(records) == 5 and calls == ["static", None]
    assert m["generation_path"] == "dynamic" and m["generation"]["weights"] == "float32"
    assert "static_16bit (float32) failed to generate: RuntimeError: compiling the decoding step failed" in \
        m["generation"]["passed_over"][-1]
    assert "falling back to dynamic" in capsys.readouterr().out


@pytest.mark.slow
def test_static_baseline_is_the_base_model_through_a_zero_adapter(small_cfg, prepared_run):
    """The static path generates through a LoRA with B = 0: the base model's answers, and the model passed in
    comes back without adapter layers."""
    run, prepared = prepared_run
    dynamic = generate_stage.baseline(small_cfg, run, prepared, force=True)
    cfg = load_config("cpu", {"infer.path": "static_16bit", "infer.max_new_tokens": 6, "infer.num_eval_questions": 4,
                              "data.train_rows": 8, "data.eval_rows": 4, "model.max_seq_length": 256,
                              "data.overlong": "truncate"})
    loaded, path = choose.load_for_generation(cfg, choose.generation_path(cfg, run, "baseline"))
    static = generate_stage.baseline(cfg, run, prepared, loaded=loaded, force=True)
    m = run.read_manifest("baseline")
    assert m["generation_path"] == "static_16bit" and m["generation"]["model_class"] == "PeftModelForCausalLM"
    assert [r["generated"] for r in static] == [r["generated"] for r in dynamic]
    assert not any("lora" in name for name, _ in loaded.model.named_modules())


def test_different_paths_are_refused(small_cfg, tmp_path):
    run = Run.open(tmp_path / "run")
    rec = choose_generation_path("auto", on_gpu=False, backend="transformers", dtype="float32", load_in_4bit=False)
    run.write_manifest(small_cfg, "baseline", generation_path="static_16bit", generation={"weights": "bfloat16"})
    run.write_manifest(small_cfg, "finetuned", generation_path=rec.path, generation={"weights": rec.weights})
    with pytest.raises(ValueError, match="different generation paths"):
        compare_stage.check_same_decoding(run)
    run.write_manifest(small_cfg, "baseline", generation_path=rec.path, generation={"weights": rec.weights})
    compare_stage.check_same_decoding(run)


@pytest.mark.slow
def test_grouped_decode_attention_gives_sdpas_answers(lora_model):
    """The tiny model has grouped-query attention (4 query heads, 2 key/value heads) like the 8B: decoding with
    `grouped_decode_attention` (no repeat_kv copy) gives the greedy tokens of transformers' SDPA, on both caches,
    and it really runs for every decoding step."""
    from transformers import AttentionInterface

    from r1helpers.inference import attention

    model, tok = lora_model
    inner = model.get_base_model()
    assert inner.config.num_key_value_heads < inner.config.num_attention_heads
    questions = [r["Question"] for r in load_sample_rows()[:4]]
    want = {c: [r["generated"] for r in generate(model, tok, questions, max_new_tokens=NEW, batch_size=4,
                                                 progress=False, cache_implementation=c)] for c in (None, "static")}
    calls = []

    def counted(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return attention.grouped_decode_attention(module, query, *args, **kwargs)

    attention.use_grouped_decode(model)
    AttentionInterface.register(attention.NAME, counted)
    try:
        assert inner.config._attn_implementation == attention.NAME
        for cache in (None, "static"):
            got = [r["generated"] for r in generate(model, tok, questions, max_new_tokens=NEW, batch_size=4,
                                                    progress=False, cache_implementation=cache)]
            assert got == want[cache], cache
    finally:
        AttentionInterface.register(attention.NAME, attention.grouped_decode_attention)
        inner.set_attn_implementation("sdpa")
    layers = inner.config.num_hidden_layers
    assert calls.count(1) >= 2 * layers * (NEW - 1) and any(q > 1 for q in calls), "decoding steps and prompts"


@pytest.mark.slow
def test_infer_attention_reaches_the_model_however_it_was_loaded(prepared_run):
    """Notebook 01 loads the base model itself (`load_base`, `for_inference`), stage 04 through
    `load_for_generation`: the generation stage sets infer.attention on the model either way, and the manifest
    records the attention that ran, which the comparison requires to be the same for both models."""
    from r1helpers.inference import attention

    run, prepared = prepared_run
    for setting, want in (("grouped_decode", attention.NAME), ("sdpa", "sdpa"), ("grouped_decode", attention.NAME)):
        cfg = load_config("cpu", {**SMALL, "infer.attention": setting})
        path = choose.generation_path(cfg, run, "baseline")
        loaded = load.for_inference(load.load_base(cfg.model.name, max_seq_length=cfg.model.max_seq_length,
                                                   load_in_4bit=path.load_in_4bit, dtype=path.dtype,
                                                   backend=path.backend, pad_token=cfg.model.pad_token))
        assert loaded.model.config._attn_implementation == "sdpa"  # as loaded
        generate_stage.baseline(cfg, run, prepared, loaded=loaded, force=True)
        assert run.read_manifest("baseline")["generation"]["attention"] == want
        assert loaded.model.config._attn_implementation == want
        tuned, _ = choose.load_for_generation(cfg, path)
        assert choose.set_up_decoding(cfg, tuned, path)["attention"] == want
    with pytest.raises(Exception, match="infer.attention"):
        load_config("cpu", {"infer.attention": "flash"})


def test_different_attention_is_refused(small_cfg, tmp_path):
    run = Run.open(tmp_path / "run")
    gen = {"weights": "bfloat16", "attention": "sdpa"}
    run.write_manifest(small_cfg, "baseline", generation_path="static_16bit", generation=gen)
    run.write_manifest(small_cfg, "finetuned", generation_path="static_16bit",
                       generation={**gen, "attention": "sdpa_grouped_decode"})
    with pytest.raises(ValueError, match="attention sdpa; fine-tuned: static_16bit, bfloat16, attention sdpa_grouped"):
        compare_stage.check_same_decoding(run)
    run.write_manifest(small_cfg, "finetuned", generation_path="static_16bit", generation=gen)
    compare_stage.check_same_decoding(run)


# ---- which notebooks import Unsloth ------------------------------------------------------------------

LLAMA_8B_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                   "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
                   "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}


@pytest.fixture
def shapes_8b(tmp_path):
    """A folder with only the 8B's config.json: enough for every decision made before a model loads."""
    import json

    folder = tmp_path / "llama8b-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    return folder


@pytest.mark.parametrize("gpu_gib, imports", [
    (139.0, {"00": True, "01": False, "02": False, "03": True, "04": False, "05": False}),  # H200: static path
    (15.0, {"00": True, "01": True, "02": False, "03": True, "04": True, "05": False}),     # T4: Unsloth's path
], ids=["H200", "T4"])
def test_start_imports_unsloth_only_in_the_notebooks_that_load_through_it(monkeypatch, tmp_path, shapes_8b,
                                                                          gpu_gib, imports):
    """Importing Unsloth took ~45 s per notebook on the H200: notebooks 02 and 05 never load a model through it,
    01 and 04 only when their generation path is Unsloth's (a T4), 00 checks that it imports, 03 trains with it."""
    from r1helpers.core import hardware
    from r1helpers.core.hardware import GPU, Hardware
    from r1helpers.inference.paths import GPUMemory
    from r1helpers.workflow import session

    gpu = GPU("NVIDIA H200" if gpu_gib > 100 else "Tesla T4", (9, 0) if gpu_gib > 100 else (7, 5), gpu_gib)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: Hardware("cuda", [gpu]))
    monkeypatch.setattr(choose, "gpu_memory", lambda cap=None, exclude_own=False: GPUMemory(gpu_gib, 0.5, False))
    imported = []
    monkeypatch.setattr(choose, "unsloth_importable", lambda: imported.append("generation_path") or (True, "imported"))
    cfg = load_config("seed", {"model.name": str(shapes_8b)})
    run = Run.open(tmp_path / "run")
    got = {stage: session.imports_unsloth(cfg, run, stage) for stage in imports}
    assert got == imports
    assert len(imported) == (2 if gpu_gib < 100 else 0)  # the generation path imported it where it chose Unsloth
    assert session.imports_unsloth(cfg, run, None) is True  # a script of one's own: as before
    with pytest.raises(Exception, match="stage"):
        session.imports_unsloth(cfg, run, "06")


@pytest.mark.slow
def test_generation_path_is_decided_before_transformers_is_imported(shapes_8b, tmp_path):
    """Unsloth must come before transformers where it is used, so the decision reads config.json itself."""
    import subprocess
    import sys

    code = ("import sys; from r1helpers.core.config import load_config; from r1helpers.inference import choose\n"
            f"p = choose.generation_path(load_config('seed', {{'model.name': {str(shapes_8b)!r}}}))\n"
            "from r1helpers.modeling.local import model_dims\n"
            f"d = model_dims({str(shapes_8b)!r})\n"
            "print(p.path, d.num_key_value_heads, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["dynamic", "8", "False"]  # this machine has no GPU


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_grouped_decode_attention_equals_sdpa_on_one_decoding_step(mask_kind):
    """One decoding step on random tensors in the 8B's head layout (32 query heads, 8 key/value heads): the
    grouped function's output equals transformers' SDPA (which copies each key/value head for its group), with
    a left-padded bool mask, the same mask as additive float, and no mask."""
    import torch
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from r1helpers.inference.attention import grouped_decode_attention

    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, dim, kv_len = 3, 32, 8, 16, 11
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    query = torch.randn(batch, heads, 1, dim, generator=g)
    key = torch.randn(batch, kv_heads, kv_len, dim, generator=g)
    value = torch.randn(batch, kv_heads, kv_len, dim, generator=g)
    attend = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
    attend[1, ..., :4] = False  # left padding of row 1
    attend[2, ..., -2:] = False  # static cache slots not written yet
    mask = {"bool": attend, "additive": torch.zeros(attend.shape).masked_fill(~attend, float("-inf")),
            "none": None}[mask_kind]
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    got, _ = grouped_decode_attention(module, query, key, value, mask, scaling=dim**-0.5)
    assert got.shape == want.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if mask_kind != "none":  # the mask matters: without it, row 1 differs
        unmasked, _ = grouped_decode_attention(module, query, key, value, None, scaling=dim**-0.5)
        assert not torch.allclose(unmasked[1], want[1], atol=1e-3)


def test_static_path_runs_the_adapter_in_the_weights_type(small_cfg, tiny_model_dir, tmp_path):
    """peft loads and creates adapter weights in float32; on the static_16bit path the generation stage casts them
    to the path's 16-bit type (no float32 matmuls in the decoding step), for the fine-tuned adapter and the zero
    adapter alike, and the cast keeps the trained values (to bfloat16 rounding)."""
    from r1helpers.inference.paths import GenerationPath
    from bench_generation import build_adapter

    adapter = build_adapter(tiny_model_dir, tmp_path / "adapter")
    path = GenerationPath("static_16bit", "test", "transformers", False, "bfloat16")
    loaded, _ = choose.load_for_generation(small_cfg, path, adapter)
    assert {p.dtype for n, p in loaded.model.named_parameters() if "lora_" in n} == {torch.float32}  # peft's
    done = choose.set_up_decoding(small_cfg, loaded, path)
    assert done["adapter_weights"] == "bfloat16" and done["adapter_tensors_cast"] > 0
    lora = {n: p for n, p in loaded.model.named_parameters() if "lora_" in n}
    layers = loaded.model.get_base_model().config.num_hidden_layers
    assert len(lora) == 2 * 7 * layers and {p.dtype for p in lora.values()} == {torch.bfloat16}
    from safetensors.torch import load_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    name, tensor = next(iter(saved.items()))
    here = next(p for n, p in lora.items() if n.replace(".default", "").endswith(name.split("base_model.model.")[-1]))
    torch.testing.assert_close(here.float(), tensor.float(), atol=0, rtol=2**-7)

    base, _ = choose.load_for_generation(small_cfg, path)
    wrapped, unload = choose.zero_adapter(small_cfg, base, path)
    choose.set_up_decoding(small_cfg, wrapped, path)
    zero = [p for n, p in wrapped.model.named_parameters() if "lora_" in n]
    assert zero and {p.dtype for p in zero} == {torch.bfloat16}
    unload()
    assert load.adapter_to_dtype(loaded.model, "bfloat16") == 0  # already cast: nothing to do


@pytest.mark.slow
def test_grouped_decode_compiles_as_one_graph(lora_model):
    """The decoding step with `grouped_decode_attention` and a LoRA is traced by dynamo as one whole graph
    (fullgraph=True raises at any graph break), as transformers compiles it for the static cache on a GPU, and
    gives the tokens of the uncompiled step. Backend "eager": dynamo's tracing without inductor's code, on a CPU."""
    from r1helpers.inference import attention

    model, tok = lora_model
    attention.use_grouped_decode(model)
    try:
        plain, traced, counts = _traced_generate(model, tok)
    finally:
        model.get_base_model().set_attn_implementation("sdpa")
    assert counts["stats"]["unique_graphs"] == 1 and not counts.get("graph_break")
    assert torch.equal(plain, traced)


def _traced_generate(model, tok, n_questions: int = 3):
    """(uncompiled tokens, compiled tokens, dynamo's counters) for a static-cache generate traced whole by dynamo
    (fullgraph, backend "eager"), as transformers compiles the decoding step on a GPU."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    inner = model.get_base_model()
    tok.padding_side = "left"
    enc = tok([prompts.build_prompt(r["Question"]) for r in load_sample_rows()[:n_questions]], return_tensors="pt",
              padding=True)
    common = dict(max_new_tokens=NEW, do_sample=False, cache_implementation="static",
                  max_cache_len=enc["input_ids"].shape[1] + NEW, pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id)
    compiled = CompileConfig(backend="eager", mode=None, fullgraph=True)
    compiled._compile_all_devices = True  # transformers compiles only on accelerators unless told
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.inference_mode():
            plain = model.generate(**enc, **common, disable_compile=True)
            traced = model.generate(**enc, **common, compile_config=compiled)
    finally:
        if hasattr(inner, "_compiled_call"):
            del inner._compiled_call
        torch._dynamo.reset()
    return plain, traced, {k: dict(v) for k, v in counters.items()}


def test_compile_seconds_split_a_compilation_by_phase():
    """`compile_seconds` (recorded for the static cache's warm-up) reads torch.compile's time by phase; a reading
    `since` an earlier one holds only what a compilation in between added, and the backend's part of it is no
    more than the whole."""
    from r1helpers.inference.generate import COMPILE_PHASES, compile_seconds

    before = compile_seconds()
    assert set(before) == set(COMPILE_PHASES)
    torch.compile(lambda x: (x * 2).sin() + 1, backend="eager")(torch.randn(3))
    spent = compile_seconds(before)
    assert spent["torch_compile"] > 0 and spent["tracing"] > 0
    assert 0 <= spent["backend"] <= spent["torch_compile"]
    assert compile_seconds(compile_seconds())["torch_compile"] == 0


@pytest.mark.slow
def test_unsloth_decode_graphs_switch_and_release(monkeypatch, lora_model):
    """`load.unsloth_decode_graphs` sets Unsloth's two switches (graphs on, the KV cache sized up front) and back
    to Unsloth's default; `release_decode_memory` hands the model to Unsloth's release and returns the step
    counts Unsloth keeps on the CausalLM. A stand-in module plays Unsloth's `_decode_graphs` (no Unsloth on a
    CPU). Without Unsloth imported, neither imports it (that would patch transformers) and both do nothing."""
    import sys
    import types

    model, _ = lora_model
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.delitem(sys.modules, load.DECODE_GRAPHS, raising=False)
    assert load.unsloth_decode_graphs(True) is False
    assert load.release_decode_memory(model) == {}
    assert "unsloth" not in sys.modules

    released = []
    fake = types.ModuleType(load.DECODE_GRAPHS)
    fake.ENABLED, fake.PREALLOC = None, False
    fake.stats = lambda m: ({"captures": 1, "replays": 41, "eager_steps": 1, "graphs": 1}
                            if "_unsloth_decode_graphs" in m.__dict__ else {})
    fake.release_for_training = released.append
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    monkeypatch.setitem(sys.modules, load.DECODE_GRAPHS, fake)
    monkeypatch.delenv("UNSLOTH_DECODE_GRAPH_PREALLOC", raising=False)
    assert load.unsloth_decode_graphs(True) is True and (fake.ENABLED, fake.PREALLOC) == (True, True)
    inner = model.get_base_model()
    monkeypatch.setitem(inner.__dict__, "_unsloth_decode_graphs", object())
    assert load.release_decode_memory(model) == {"captures": 1, "replays": 41, "eager_steps": 1}
    assert released == [model]
    assert load.unsloth_decode_graphs(False) is False and (fake.ENABLED, fake.PREALLOC) == (None, False)
    monkeypatch.setenv("UNSLOTH_DECODE_GRAPH_PREALLOC", "1")  # the user's own setting stays
    load.unsloth_decode_graphs(False)
    assert fake.PREALLOC is True


@pytest.mark.slow
def test_plain_lora_forward_gives_peft_outputs_bit_for_bit(lora_model):
    """Within `plain_lora_forward` each LoRA layer computes what peft's forward computes, bit for bit: with
    float32 weights and, cast to bfloat16 with the adapter left in float32 (peft then casts the input to the
    adapter's type and the result back). Afterwards peft's forward is back, and a layer that does not compute
    plain LoRA (adapters disabled) keeps peft's forward inside the block."""
    from r1helpers.inference.lora_forward import plain_lora_forward

    model, tok = lora_model
    inner = model.get_base_model()
    layers = 7 * inner.config.num_hidden_layers
    ids = tok([prompts.build_prompt(r["Question"]) for r in load_sample_rows()[:2]], return_tensors="pt",
              padding=True)
    with torch.inference_mode():
        peft_logits = model(**ids).logits
        with plain_lora_forward(model) as n:
            assert n == layers
            plain_logits = model(**ids).logits
        assert torch.equal(plain_logits, peft_logits)
        assert not any("forward" in m.__dict__ for m in model.modules())
        with model.disable_adapter(), plain_lora_forward(model) as n:
            assert n == 0
        with plain_lora_forward(model, on=False) as n:
            assert n == 0
    try:
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.data = p.data.to(torch.bfloat16)
        with torch.inference_mode():
            peft16 = model(**ids).logits
            with plain_lora_forward(model) as n:
                plain16 = model(**ids).logits
        assert n == layers and plain16.dtype == torch.bfloat16 and torch.equal(plain16, peft16)
    finally:
        for p in model.parameters():
            p.data = p.data.to(torch.float32)


@pytest.mark.slow
def test_plain_lora_forward_traces_less_and_keeps_the_compiled_step(lora_model):
    """Dynamo traces the decoding step with the plain LoRA functions as one graph with fewer captured calls than
    through peft's forward, and the tokens stay those of the uncompiled step. Entering the block again (a stage's
    next batch) installs the very same functions and traces no new graph: torch 2.13 guards a function by its code,
    but the same objects keep a step's guards whatever a torch version guards on."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from r1helpers.inference.lora_forward import plain_lora_forward

    from torch._dynamo import symbolic_convert

    model, tok = lora_model
    steps_traced = [0]  # bytecode instructions Dynamo steps through while tracing: its work, counted
    step = symbolic_convert.InstructionTranslatorBase.step

    def counted(self):
        steps_traced[0] += 1
        return step(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(symbolic_convert.InstructionTranslatorBase, "step", counted)
        plain, through_peft, peft_counts = _traced_generate(model, tok)
        through_peft_steps, steps_traced[0] = steps_traced[0], 0
        with plain_lora_forward(model):
            plain_again, traced, counts = _traced_generate(model, tok)
    assert torch.equal(plain_again, plain) and torch.equal(traced, through_peft)
    assert counts["stats"]["unique_graphs"] == 1 and not counts.get("graph_break")
    # the same operations in the graph, fewer instructions traced to find them
    assert counts["stats"]["calls_captured"] == peft_counts["stats"]["calls_captured"]
    assert 0 < steps_traced[0] < 0.85 * through_peft_steps

    ids = tok(["What causes scurvy?"], return_tensors="pt")
    forward = torch.compile(lambda: model(**ids).logits, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.inference_mode():
            with plain_lora_forward(model):
                first = forward()
                functions = [m.forward for m in model.modules() if "forward" in m.__dict__]
            with plain_lora_forward(model):
                second = forward()
                assert [m.forward for m in model.modules() if "forward" in m.__dict__] == functions
        assert counters["stats"]["unique_graphs"] == 1 and torch.equal(first, second)
    finally:
        torch._dynamo.reset()


def test_speed_takes_the_stage_speed_apart():
    """`speed` sums the warm-ups of all batches and divides the decoding steps' tokens by their seconds."""
    from r1helpers.inference.generate import speed

    stats = {"warmup_seconds": [17.5, 0.3], "decode_seconds": [20.0, 5.0], "decode_tokens": [60_000, 15_000],
             "compile_seconds": {"torch_compile": 16.18, "tracing": 11.4}}
    assert speed(stats) == {"warm-up seconds": 17.8, "of it compiling, seconds": 16.2,
                            "decoding tokens per second": 3000.0}
    assert speed({"warmup_seconds": [1.0], "decode_seconds": [], "decode_tokens": []}) == {
        "warm-up seconds": 1.0, "of it compiling, seconds": None, "decoding tokens per second": None}
