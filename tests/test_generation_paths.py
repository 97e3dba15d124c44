"""Generation paths: which one each machine gets and why, that generation gives the answers of plain batch-1
generation, and what the stages record.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_generation_paths.py
"""

from __future__ import annotations

import pytest
import torch

from r1helpers.core import hardware, prompts
from r1helpers.core.config import load_config
from r1helpers.core.hardware import GPU, Hardware
from r1helpers.core.recipes import TINY_MODEL
from r1helpers.core.runs import Run, read_jsonl
from r1helpers.data_sources import load_sample_rows
from r1helpers.inference import choose
from r1helpers.inference.generate import generate, plan_for_model
from r1helpers.modeling import load
from r1helpers.workflow import compare_stage, data_stage, generate_stage

T4 = GPU("Tesla T4", (7, 5), 15.0)


# ---- the choice ------------------------------------------------------------------------------------

@pytest.fixture
def on_t4(monkeypatch):
    """A T4 on which Unsloth imports (a stand-in: nothing is imported)."""
    monkeypatch.setattr(hardware, "detect_hardware", lambda: Hardware("cuda", [T4]))
    monkeypatch.setattr("r1helpers.modeling.local.model_dims", lambda *a: None)
    monkeypatch.setattr(choose, "unsloth_importable", lambda: (True, "imported"))


def test_t4_takes_unsloth_else_the_dynamic_cache_on_4bit_weights(on_t4, monkeypatch):
    p = choose.generation_path(load_config("seed"))
    assert (p.path, p.backend, p.load_in_4bit, p.dtype) == ("unsloth", "unsloth", True, "float16")
    assert p.kv_slack_tokens == choose.UNSLOTH_KV_INCREMENT and p.weights == "4-bit nf4, float16 compute"
    assert "for_inference" in p.reason and p.passed_over == []
    monkeypatch.setattr(choose, "unsloth_importable", lambda: (False, "unsloth did not import (ImportError: x)"))
    q = choose.generation_path(load_config("seed"))
    assert (q.path, q.backend, q.load_in_4bit, q.kv_slack_tokens) == ("dynamic", "transformers", True, 0)
    assert q.passed_over == ["unsloth: unsloth did not import (ImportError: x)"]


def test_cpu_and_explicit_requests(on_t4, monkeypatch):
    d = choose.generation_path(load_config("seed", {"infer.path": "dynamic"}))
    assert (d.path, d.backend, d.load_in_4bit) == ("dynamic", "transformers", True)
    assert d.reason.startswith("infer.path=dynamic: ")
    t = choose.generation_path(load_config("seed", {"infer.path": "unsloth", "model.backend": "transformers"}))
    assert t.path == "dynamic" and "backend is transformers" in t.passed_over[0]
    monkeypatch.setattr(hardware, "detect_hardware", lambda: Hardware("cpu", []))
    p = choose.generation_path(load_config("cpu"))
    assert (p.path, p.dtype, p.load_in_4bit) == ("dynamic", "float32", False)
    with pytest.raises(Exception, match="infer.path"):
        load_config("cpu", {"infer.path": "static_16bit"})


def test_gpu_cap_from_the_environment(monkeypatch):
    monkeypatch.delenv(choose.GPU_GIB_ENV, raising=False)
    assert choose.gpu_cap_gib() is None and choose.apply_gpu_cap(None) is False
    monkeypatch.setenv(choose.GPU_GIB_ENV, " 15 ")
    assert choose.gpu_cap_gib() == 15.0


# ---- the same answers as plain generation ------------------------------------------------------------

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


@pytest.mark.slow
def test_generation_gives_the_answers_of_plain_batch_one_generation(lora_model):
    """Left-padded batches (the pad is not EOS) give each question the answer it gets alone, unpadded."""
    model, tok = lora_model
    questions = [r["Question"] for r in load_sample_rows()[:5]]
    reference = [tok.decode(plain_batch_one(model, tok, q), skip_special_tokens=True) for q in questions]
    stats: dict = {}
    got = generate(model, tok, questions, max_new_tokens=NEW, batch_size=3, progress=False, stats=stats)
    assert [r["generated"] for r in got] == reference
    assert len({r["generated"] for r in got}) == len(questions), "distinct answers, so the check means something"
    assert stats["batches"] == [3, 2]


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


def test_different_paths_are_refused(small_cfg, tmp_path):
    run = Run.open(tmp_path / "run")
    run.write_manifest(small_cfg, "baseline", generation_path="unsloth", generation={"weights": "4-bit nf4"})
    run.write_manifest(small_cfg, "finetuned", generation_path="dynamic", generation={"weights": "4-bit nf4"})
    with pytest.raises(ValueError, match="different generation paths"):
        compare_stage.check_same_decoding(run)
    run.write_manifest(small_cfg, "baseline", generation_path="dynamic", generation={"weights": "4-bit nf4"})
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


def test_start_imports_unsloth_only_in_the_notebooks_that_load_through_it(monkeypatch, tmp_path, shapes_8b):
    """Importing Unsloth took ~45 s per notebook on the H200: notebooks 02 and 05 never load a model through it,
    01 and 04 only when their generation path is Unsloth's (a T4), 00 checks that it imports, 03 trains with it."""
    from r1helpers.workflow import session

    imports = {"00": True, "01": True, "02": False, "03": True, "04": True, "05": False}
    monkeypatch.setattr(hardware, "detect_hardware", lambda: Hardware("cuda", [T4]))
    imported = []
    monkeypatch.setattr(choose, "unsloth_importable", lambda: imported.append("generation_path") or (True, "imported"))
    cfg = load_config("seed", {"model.name": str(shapes_8b)})
    run = Run.open(tmp_path / "run")
    assert {stage: session.imports_unsloth(cfg, run, stage) for stage in imports} == imports
    assert len(imported) == 2  # the generation path imported it for 01 and 04
    dynamic = load_config("seed", {"model.name": str(shapes_8b), "infer.path": "dynamic"})
    assert not session.imports_unsloth(dynamic, run, "01")
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


def test_speed_takes_the_stage_speed_apart():
    """`speed` sums the warm-ups of all batches and divides the decoding steps' tokens by their seconds."""
    from r1helpers.inference.generate import speed

    stats = {"warmup_seconds": [17.5, 0.3], "decode_seconds": [20.0, 5.0], "decode_tokens": [60_000, 15_000]}
    assert speed(stats) == {"warm-up seconds": 17.8, "decoding tokens per second": 3000.0}
    assert speed({"warmup_seconds": [1.0], "decode_seconds": [], "decode_tokens": []}) == {
        "warm-up seconds": 1.0, "decoding tokens per second": None}
