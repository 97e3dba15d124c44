"""Stage 05 on the tiny model: every format written, read back by other code than wrote it, and judged.

One export runs per module (about 20 s). The adapter's B matrices are random rather than
trained, so the merge visibly moves the logits without the minutes a training run costs.
The checks here use plain peft, transformers and gguf, not the export's own checkers.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_export.py
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from r1helpers.workflow import export, export_setup
from r1helpers.export import checks as export_checks
from r1helpers.export import gguf_checks as export_gguf_checks
from r1helpers.export import parity as export_parity
from r1helpers.export import hub
from r1helpers.export import space
from r1helpers.workflow import hub as workflow_hub
from r1helpers.core import prompts
from r1helpers.core.config import apply_overrides
from r1helpers.core.runs import Run, write_json_atomic
from r1helpers.workflow import data_stage, train_stage

HEADLINE = "Fine-tuning helped: completion NLL on 16 held-out questions went from 2.5000 to 2.3000 (test)."


@pytest.fixture(scope="module")
def cfg(cpu_cfg):
    return apply_overrides(cpu_cfg, {"train.wandb": "off"})


def _adapter(cfg, folder: Path) -> Path:
    import torch

    from r1helpers.inference.choose import load_base_for
    from r1helpers.workflow.train_stage import with_lora

    model = with_lora(cfg, load_base_for(cfg)).model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(str(folder))
    return folder


def _comparison(run: Run) -> None:
    """What stage 04 leaves for the model card; the card must quote it."""
    metric = {"key": "completion_nll", "label": "completion NLL", "n": 16, "before": 2.5, "after": 2.3,
              "delta": -0.2, "ci": [-0.25, -0.15], "verdict": "better"}
    write_json_atomic(run.stage_dir("compare") / "comparison.json", {
        "headline": HEADLINE, "verdict": "helped", "primary_metric": "completion_nll", "metrics": [metric],
        "settings": {"held_out_rows_scored": 16, "held_out_questions_generated": 3}})


def _export(cfg, run, force=False):
    """Notebook 05's cells in order: adapter, merged 16-bit model and GGUF files, each checked; the Hub step."""
    from r1helpers.export.files import save_tokenizer, write_adapter
    from r1helpers.export.gguf import write_gguf_files
    from r1helpers.export.merge import merge_lora

    job = export.begin(cfg, run, force)
    if not job.building:
        return job.finish()
    try:
        with job.writing("adapter") as folder:
            write_adapter(job.adapter_dir, folder, job.tokenizer)
            job.check_adapter(folder)
        if cfg.export.save_merged_16bit or job.gguf_kinds:
            with job.writing("merged_16bit") as folder:
                merge_lora(job.base_dir, job.out / "adapter", folder, job.dtype)
                save_tokenizer(job.tokenizer, folder)
                job.check_merged(folder)
        if job.gguf_kinds and job.merged_dir:
            with job.writing("gguf") as folder:
                files = write_gguf_files(job.merged_dir, folder, job.gguf_kinds, job.stem, cfg.model.name,
                                         job.tokenizer.chat_template, job.quantizer, timed=job.timed)
                job.check_gguf(files)
        hub_result = workflow_hub.publish(cfg, run, job.to_push())
    except BaseException:
        job.release()
        raise
    return job.finish(hub_result)


@pytest.fixture(scope="module")
def exported(cfg, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = Run.open(root / "run")
    prepared = data_stage.prepare(cfg, run, tokenizer)
    adapter = _adapter(cfg, root / "adapter")
    _comparison(run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_stage, "ensure_trained", lambda *a, **k: train_stage.TrainResult(adapter, [], {}))
        record = _export(cfg, run, force=True)
    question = data_stage.eval_questions(prepared, 1)[0]["question"]
    return SimpleNamespace(run=run, record=record, adapter=adapter, out=run.stage_dir("export"),
                           prompt=prompts.encode_prompt(tokenizer, question), question=question,
                           probe_prompts=export_setup.probe_prompts(cfg, prepared, tokenizer))


@pytest.fixture(scope="module")
def base_dir(cfg):
    from r1helpers.modeling.local import resolve_model_path

    return Path(resolve_model_path(cfg.model.name))


def _float32(path: Path, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs).eval()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _greedy(model, ids, n=16):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def _renders_training_prompt(folder: Path, tokenizer, question: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    chat = [{"role": "user", "content": question}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        tok.bos_token + prompts.build_prompt(question)
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == prompts.encode_prompt(tokenizer, question)
    assert tok.pad_token_id != tok.eos_token_id


# ---- the three formats ---------------------------------------------------------------------------

@pytest.mark.slow
def test_adapter_loads_with_plain_peft_and_prompts_as_in_training(exported, base_dir, tokenizer):
    from peft import PeftModel

    folder = exported.out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= \
        {p.name for p in folder.iterdir()}
    model = PeftModel.from_pretrained(_float32(base_dir), str(folder))
    assert any("lora_B" in n for n, _ in model.named_parameters())
    _renders_training_prompt(folder, tokenizer, exported.question)
    assert exported.record["artefacts"]["adapter"]["checks"]["loads_with_peft"]["passed"]


@pytest.mark.slow
def test_merged_16bit_model_gives_base_plus_adapter_logits_with_plain_transformers(exported, base_dir, tokenizer):
    import torch
    from peft import PeftModel

    folder = exported.out / "merged_16bit"
    config = json.loads((folder / "config.json").read_text())
    # merged_dtype=auto merges in float16 first: its 3 more mantissa bits keep a small LoRA update.
    assert config["dtype"] == "float16" and "quantization_config" not in config
    assert list(folder.glob("*.safetensors"))
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id and gen["pad_token_id"] == tokenizer.pad_token_id
    _renders_training_prompt(folder, tokenizer, exported.question)

    reference = PeftModel.from_pretrained(_float32(base_dir), str(exported.out / "adapter")).eval()
    merged = _float32(folder)
    ref, got = _logits(reference, exported.prompt), _logits(merged, exported.prompt)
    diff = (got - ref).abs().max().item()
    tolerance = export_checks.LOGIT_TOL["merged"] * (ref.max() - ref.min()).item()
    with reference.disable_adapter():
        adapter_effect = (_logits(reference, exported.prompt) - ref).abs().max().item()
    assert diff <= tolerance < adapter_effect, (diff, tolerance, adapter_effect)
    assert _greedy(merged, exported.prompt) == _greedy(reference, exported.prompt)
    assert merged.dtype == torch.float32  # compared in float32: the 16-bit rounding is the only difference


@pytest.mark.slow
def test_merge_is_one_rounding_of_base_plus_lora_in_16_bit(exported, base_dir):
    """Base weights from the 16-bit checkpoint plus scale * B @ A (taken in float64, then float32), rounded once to
    16-bit: no 4-bit round trip."""
    import torch
    from safetensors.torch import load_file

    acfg = json.loads((exported.adapter / "adapter_config.json").read_text())
    lora = load_file(str(exported.adapter / "adapter_model.safetensors"))
    base = load_file(str(base_dir / "model.safetensors"))
    merged = load_file(str(exported.out / "merged_16bit" / "model.safetensors"))
    scale = acfg["lora_alpha"] / acfg["r"]
    checked = 0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b = lora[key.replace(".lora_A.", ".lora_B.")]
        name = key.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
        expected = (base[name].float() + ((b.double() @ a.double()) * scale).float()).to(torch.float16)
        assert merged[name].dtype == torch.float16 and torch.equal(merged[name], expected), name
        checked += 1
    assert checked == len(acfg["target_modules"]) * 2  # two layers in the tiny model
    assert exported.record["artefacts"]["merged"]["checks"]["weights"]["max_error_in_rounding_units"] <= 1.0


@pytest.mark.slow
def test_merge_of_a_sharded_base_keeps_its_shards_and_loads(exported, base_dir, tmp_path):
    """The 8B checkpoint is sharded: the merge writes the same shards and index, one shard at a time."""
    import torch
    from safetensors.torch import load_file

    from r1helpers.export.merge import merge_lora, weight_check

    sharded = tmp_path / "sharded-base"
    _float32(base_dir).save_pretrained(str(sharded), max_shard_size="1MB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1
    out = tmp_path / "merged"
    out.mkdir()
    report = merge_lora(sharded, exported.adapter, out, "float16")
    assert report.shards == shards and (out / "model.safetensors.index.json").is_file()
    assert weight_check(sharded, exported.adapter, out)["max_error_in_rounding_units"] <= 1.0
    single = load_file(str(exported.out / "merged_16bit" / "model.safetensors"))
    loaded = {k: v.detach() for k, v in _float32(out).state_dict().items()}
    assert set(loaded) == set(single)
    assert all(torch.equal(loaded[k], single[k].float()) for k in single)


@pytest.mark.slow
def test_gguf_read_back_by_transformers_gives_the_merged_models_greedy_tokens(exported):
    import gguf

    folder = exported.out / "gguf"
    files = exported.record["artefacts"]["gguf"]["files"]
    assert {"f16", "q8_0"} <= set(files)
    merged = _float32(exported.out / "merged_16bit")
    want, ref = _greedy(merged, exported.prompt), _logits(merged, exported.prompt)
    for kind in ("f16", "q8_0"):
        model = _float32(folder, gguf_file=files[kind]["file"])
        got = _logits(model, exported.prompt)
        top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        if kind == "f16":
            assert _greedy(model, exported.prompt) == want
            assert (got - ref).abs().max().item() < 1e-3
        else:
            assert top1 >= 0.9, top1
        assert files[kind]["checks"]["transformers"]["passed"]
        fields = gguf.GGUFReader(str(folder / files[kind]["file"])).fields
        assert fields["tokenizer.chat_template"].contents() == prompts.CHAT_TEMPLATE
        assert fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    if "q4_k_m" in files:
        assert files["q4_k_m"]["checks"]["transformers"]["passed"]
    else:
        assert any(n.startswith("q4_k_m:") and n.endswith("skipped") for n in exported.record["notes"])
    assert "FROM ./" in (folder / "Modelfile").read_text()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"
    took = exported.record["seconds"]  # where the stage's time went, step by step
    for step in ("adapter: write and check", "merged_16bit: write and check", "merged float16: logit check",
                 "GGUF q8_0: write", "GGUF q8_0: weight check", "GGUF f16: transformers read-back and logit check"):
        assert took[step] >= 0.0, step
    assert sum(took.values()) > 0


@pytest.mark.slow
def test_checks_fail_on_a_model_that_is_not_the_trained_one(exported, base_dir):
    """The base model passed off as the merged one, or as its GGUF, is refused."""
    probes = export_checks.adapter_reference(base_dir, exported.out / "adapter", [exported.prompt], 8)
    with pytest.raises(export_checks.ExportCheckError, match="lost part of the adapter|logits differ"):
        export_checks.check_merged(base_dir, probes)
    base_probes = export_checks.reference_probes(_float32(base_dir), [exported.prompt], 8)
    f16 = exported.out / "gguf" / exported.record["artefacts"]["gguf"]["files"]["f16"]["file"]
    with pytest.raises(export_checks.ExportCheckError):
        export_gguf_checks.check_gguf_transformers(f16, base_probes, "f16")


# ---- model card and Hub ------------------------------------------------------------------------------

@pytest.mark.slow
def test_model_cards_say_what_how_how_well_and_not_for_clinical_decisions(exported, cfg):
    for kind, folder in (("adapter", "adapter"), ("merged", "merged_16bit"), ("gguf", "gguf")):
        card = (exported.out / folder / "README.md").read_text()
        assert card.startswith("---\n") and f"base_model: {cfg.model.name}\n" in card
        assert f"library_name: {hub.LIBRARY[kind]}" in card
        assert hub.WHAT[kind] in card
        assert "**Not for clinical decisions.**" in card and "not-for-clinical-use" in card
        assert f"Dataset: `{cfg.data.source}`" in card and f"split `{cfg.data.split}`" in card
        assert f"the first {cfg.data.train_rows} rows train; the next {cfg.data.eval_rows} are held out" in card
        assert f"LoRA: r={cfg.lora.r}, alpha={cfg.lora.alpha}" in card
        assert f"{cfg.train.max_steps} steps" in card and f"learning rate {cfg.train.learning_rate}" in card
        assert HEADLINE in card and "| completion NLL | 16 | 2.5 | 2.3 | -0.2 | [-0.25, -0.15] | better |" in card
        assert "## Intended use" in card and "## Limitations" in card
        assert prompts.build_prompt("{question}") in card
    assert "logits_vs_adapter" in (exported.out / "merged_16bit" / "README.md").read_text()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_without_token_the_run_folder_gets_exactly_what_would_be_uploaded(exported):
    plan_dir = exported.out / "hub"
    plan = json.loads((plan_dir / "upload_plan.json").read_text())
    assert plan["pushed"] is False and plan["private"] is True and plan["reason"] == "no export.hub_repo set"
    assert {r["kind"]: r["repo_id"].rsplit("-", 1)[-1] for r in plan["repos"]} == \
        {"adapter": "lora", "merged": "run", "gguf": "GGUF"}
    for repo in plan["repos"]:
        folder = Path(repo["folder"])
        on_disk = {p.name: (p.stat().st_size, _sha256(p)) for p in folder.iterdir() if p.is_file()}
        assert {f["path"]: (f["size"], f["sha256"]) for f in repo["files"]} == on_disk
        assert (plan_dir / repo["kind"] / "README.md").read_text() == (folder / "README.md").read_text()
    message = exported.record["hub"]["message"]
    assert message.startswith("Hub push skipped: no export.hub_repo set") and str(plan_dir) in message


class FakeHfApi:
    calls: list[tuple] = []

    def __init__(self, token=None):
        self.calls.append(("token", token))

    def create_repo(self, repo_id, private, exist_ok, repo_type):
        self.calls.append(("create", repo_id, private))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        self.calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_push_needs_a_token_and_a_repo_and_is_private_by_default(cfg, tmp_path, monkeypatch):
    import huggingface_hub

    from r1helpers.core import config
    from r1helpers.core import secrets

    monkeypatch.setattr(secrets, "load_secrets", lambda **k: None)
    monkeypatch.setattr(config, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    FakeHfApi.calls = []
    run = Run.open(tmp_path / "run")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    with_repo = apply_overrides(cfg, {"export.hub_repo": "someone/r1-medical"})

    assert workflow_hub.publish(cfg, run, {"adapter": folder})["reason"] == "no export.hub_repo set"
    no_token = workflow_hub.publish(with_repo, run, {"adapter": folder})
    assert not no_token["pushed"] and "token" in no_token["reason"] and FakeHfApi.calls == []

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    pushed = workflow_hub.publish(with_repo, run, {"adapter": folder, "merged": folder})
    assert pushed["pushed"] and [r["repo_id"] for r in pushed["repos"]] == ["someone/r1-medical-lora",
                                                                           "someone/r1-medical"]
    assert ("create", "someone/r1-medical-lora", True) in FakeHfApi.calls
    assert ("upload", "someone/r1-medical-lora", ["adapter_model.safetensors"]) in FakeHfApi.calls
    public = workflow_hub.publish(apply_overrides(with_repo, {"export.hub_private": False}), run, {"adapter": folder})
    assert public["private"] is False and ("create", "someone/r1-medical-lora", False) in FakeHfApi.calls


# ---- disk ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_refuses_before_writing_when_free_space_is_too_small(exported, cfg, tmp_path, monkeypatch):
    out = tmp_path / "big-export"
    elsewhere = apply_overrides(cfg, {"export.output_dir": str(out)})
    before = (exported.out / "exported.json").read_text()
    monkeypatch.setattr(train_stage, "ensure_trained", lambda *a, **k: train_stage.TrainResult(exported.adapter, [], {}))
    monkeypatch.setattr(space, "free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(export.ExportSpaceError, match=r"export refused: it needs about .* MB in .* only 10\.5 MB "
                                                      r"is free there\. Nothing was written"):
        export.begin(elsewhere, exported.run)
    assert not out.exists()
    assert (exported.out / "exported.json").read_text() == before


@pytest.mark.slow
def test_space_plan_counts_every_file_the_export_writes(exported):
    planned = {p["what"]: p["bytes"] for p in exported.record["space"]["planned"]}
    assert {"adapter", "merged 16-bit", "GGUF f16", "GGUF q8_0"} <= set(planned)
    written = {"merged 16-bit": exported.record["artefacts"]["merged"]["bytes"]}
    written.update({f"GGUF {k}": f["bytes"] for k, f in exported.record["artefacts"]["gguf"]["files"].items()})
    for what, size in written.items():
        assert size <= planned[what] * 1.2 + 2**20, (what, size, planned[what])


# ---- nothing half-made is reused, nothing orphaned is kept (issue 13), the merge keeps the adapter (issue 14) ----

def _reexport(cfg, run, adapter, monkeypatch, **kw):
    monkeypatch.setattr(train_stage, "ensure_trained", lambda *a, **k: train_stage.TrainResult(adapter, [], {}))
    return _export(cfg, run, **kw)


@pytest.mark.slow
def test_every_artefact_records_the_adapter_it_came_from(exported):
    trained = export_setup.adapter_hash(exported.adapter)
    arts = exported.record["artefacts"]
    assert {a["adapter_sha256"] for a in arts.values()} == {trained} and {"adapter", "merged", "gguf"} <= set(arts)
    assert exported.record["source"]["sha256"] == trained


def _copy_run(exported, cfg, root: Path) -> Run:
    """A copy of the finished run folder, its records pointing at the copy's own exports."""
    import shutil

    run = Run.open(root)
    shutil.copytree(exported.run.root, run.root, dirs_exist_ok=True)
    record = json.loads(run.path("exported").read_text())
    for art in record["artefacts"].values():
        art["path"] = art["path"].replace(str(exported.run.root), str(run.root))
    write_json_atomic(run.path("exported"), record)
    run.write_manifest(cfg, "export", must_exist=[a["path"] for a in record["artefacts"].values()])
    return run


@pytest.mark.slow
def test_an_export_whose_adapter_was_replaced_is_made_again(exported, cfg, monkeypatch, capsys, tmp_path):
    run = _copy_run(exported, cfg, tmp_path / "run")
    monkeypatch.setattr(train_stage, "ensure_trained", lambda *a, **k: train_stage.TrainResult(exported.adapter, [], {}))
    job = export.begin(cfg, run)
    assert not job.building and job.status.startswith("reused")
    assert job.finish() == json.loads(run.path("exported").read_text())
    monkeypatch.setattr(export_setup, "adapter_hash", lambda d: "another" if d == exported.adapter else "old")
    monkeypatch.setattr(export.ExportJob, "prepare_build", lambda self, prepared, force: None)
    job = export.begin(cfg, run)
    job.release()
    assert job.building and "not reusing the recorded export" in capsys.readouterr().out


def _job(exported, cfg, dtypes, mcq=False, **overrides):
    """A job as `begin` leaves it, over a fresh output folder, with the adapter written and checked; with `mcq`,
    scoring the multiple-choice set (export.accuracy_check), else not."""
    import shutil

    from r1helpers.export.files import write_adapter

    tok = export_setup.export_tokenizer(cfg)
    out = exported.out.parent / "job-export"
    shutil.rmtree(out, ignore_errors=True)
    job = export.ExportJob(apply_overrides(cfg, {"export.save_merged_16bit": False, **overrides}), exported.run, out)
    base = export.locate_base(cfg.model.name, cfg.model.revision)
    job.adapter_dir, job.base_dir, job.tokenizer, job.stem = exported.adapter, export.fetch_base(base), tok, "tiny"
    job.prompts, job.prompt_texts = export_setup.probe_prompts(cfg, data_stage.prepare(cfg, exported.run), tok)
    job.logits_ok, job.dtypes, job.dtype = export_checks.logits_fit(base.parameters), dtypes, dtypes[0]
    job.mcq = job.accuracy_plan(base.parameters, export_checks.check_device(base.parameters))[0] if mcq else None
    with job.writing("adapter") as folder:
        write_adapter(job.adapter_dir, folder, tok)
        job.check_adapter(folder)
    return job


def _merge(job):
    """Notebook 05's merge cell."""
    from r1helpers.export.files import save_tokenizer
    from r1helpers.export.merge import merge_lora

    with job.writing("merged_16bit") as folder:
        merge_lora(job.base_dir, job.out / "adapter", folder, job.dtype)
        save_tokenizer(job.tokenizer, folder)
        job.check_merged(folder)


@pytest.mark.slow
def test_merge_falls_back_to_the_dtype_that_keeps_the_adapter(exported, cfg, monkeypatch):
    """A 16-bit type whose merge fails its check is not kept; the next one that passes is. On the tiny model a
    bfloat16 merge changes one greedy token of 48, at a near tie of the reference (margin 0.0105 against a
    largest logit difference of 0.067) while keeping 98% of the adapter's effect on the logits: that passes,
    with the near tie recorded. So the fallback is shown with bfloat16's check made to fail."""
    from r1helpers.export import checks as ec

    job = _job(exported, cfg, ["bfloat16"])
    _merge(job)
    check = job.checks["logits_vs_adapter"]
    assert job.dtype == "bfloat16" and check["passed"] and not check["greedy_identical"]
    assert check["greedy_near_ties"] == len(check["greedy_divergences"]) >= 1
    assert all(d["reference_margin"] <= ec.NEAR_TIE * check["max_abs_logit_diff"] for d in check["greedy_divergences"])
    assert check["adapter_residual_share"] < ec.ADAPTER_KEPT_TOL

    real, calls = ec.check_merged, []
    monkeypatch.setattr(ec, "check_merged", lambda folder, probes, **kw: (_ for _ in ()).throw(ec.ExportCheckError(
        "greedy tokens differ (made to fail)")) if not calls.append(folder) and len(calls) == 1
        else real(folder, probes, **kw))
    references = []
    monkeypatch.setattr(ec, "adapter_reference", lambda *a, real_ref=ec.adapter_reference, **kw: references.append(1)
                        or real_ref(*a, **kw))
    job = _job(exported, cfg, ["bfloat16", "float16"])
    _merge(job)
    tried = job.extra["merged_16bit"]["dtype_tried"]
    assert job.dtype == "float16" and json.loads((job.merged_dir / "config.json").read_text())["dtype"] == "float16"
    assert tried[0].startswith("bfloat16: ") and "greedy tokens differ" in tried[0] and tried[1] == "float16: passed"
    assert "float16 passed" in job.notes[-1]
    assert len(references) == 1, "base + adapter is loaded once for both checks"
    assert export_setup.dtype_candidates("auto", "bfloat16")[0] == "float16"
    monkeypatch.setattr(ec, "check_merged", lambda folder, probes, **kw: (_ for _ in ()).throw(
        ec.ExportCheckError("greedy tokens differ")))
    job = _job(exported, cfg, ["float16", "bfloat16"])
    _merge(job)
    assert job.merged_dir is None and "use the adapter on the base model" in job.notes[-1]
    assert [p.name for p in job.out.iterdir()] == ["adapter"], "no temporary merge is left behind"


@pytest.mark.slow
def test_gguf_checks_reuse_the_merged_models_own_probes(exported, cfg, monkeypatch):
    """The merged model's greedy tokens and logits, taken while its check had it loaded, are the GGUF files'
    reference: the merged model is not loaded in float32 again (32 GB for the 8B). The temporary merge is
    deleted once the GGUF files are written."""
    from r1helpers.export import checks as ec
    from r1helpers.export.gguf import write_gguf_files

    job = _job(exported, cfg, ["float16"])
    _merge(job)
    own = job.merged_probes
    again = ec.reference_probes(ec.load_float32(job.merged_dir), job.prompts, cfg.export.check_tokens)
    assert [p.greedy for p in own] == [p.greedy for p in again] and len(own) == len(job.prompts)
    assert all(np.array_equal(a.logits, b.logits) for a, b in zip(own, again))
    monkeypatch.setattr(ec, "reference_probes", lambda *a: pytest.fail("the merged model was loaded again"))
    with job.writing("gguf") as folder:
        job.check_gguf(write_gguf_files(job.merged_dir, folder, ["f16"], job.stem, cfg.model.name,
                                        job.tokenizer.chat_template))
    assert job.artefacts["gguf"]["files"]["f16"]["checks"]["transformers"]["passed"]
    assert sorted(p.name for p in job.out.iterdir()) == ["adapter", "gguf"]


# ---- issue 25: nothing exported is lost ------------------------------------------------------------------

def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_overwrite_moves_the_exports_in_an_output_dir_aside_and_deletes_nothing(exported, cfg, tmp_path, monkeypatch):
    """--set export.output_dir=X, then the same with export.gguf=[f16] and --overwrite: the old Q8_0 file and
    the merged model in X move to X/replaced/, byte for byte, as the records move to <run>/replaced/."""
    from r1helpers.core.runs import RunFolderConflict

    X = tmp_path / "X"
    first = apply_overrides(cfg, {"export.output_dir": str(X), "export.gguf": ["q8_0"]})
    run = Run.open(tmp_path / "run")
    _reexport(first, run, exported.adapter, monkeypatch)
    old = _tree(X)
    assert any(k.endswith("Q8_0.gguf") for k in old) and "merged_16bit/model.safetensors" in old
    second = apply_overrides(first, {"export.gguf": ["f16"]})
    with pytest.raises(RunFolderConflict):
        _reexport(second, run, exported.adapter, monkeypatch)
    assert _tree(X) == old
    record = _reexport(second, Run.open(run.root, overwrite=True), exported.adapter, monkeypatch)
    [aside] = (X / "replaced").iterdir()
    assert _tree(aside) == old, "every old export moved aside whole"
    assert [p.name for p in (run.root / "replaced").iterdir()] == [aside.name]
    assert set(record["artefacts"]["gguf"]["files"]) == {"f16"} and not list((X / "gguf").glob("*Q8_0*"))
    assert any(str(aside) in n for n in record["notes"])


@pytest.mark.slow
def test_a_damaged_adapter_stops_the_export_before_the_exported_copy_is_replaced(exported, cfg, tmp_path,
                                                                                 monkeypatch):
    """A truncated train/adapter (it no longer loads), or one whose bytes changed without training having run
    since the export recorded its sha256: the stage stops naming the file, and export/adapter stays intact."""
    import os
    import shutil

    from r1helpers.export.checks import ExportCheckError

    run = _copy_run(exported, cfg, tmp_path / "run")
    adapter = run.path("adapter")
    shutil.copytree(exported.adapter, adapter)
    weights = adapter / "adapter_model.safetensors"
    copy = run.stage_dir("export") / "adapter" / "adapter_model.safetensors"
    before = _tree(run.stage_dir("export"))
    os.truncate(weights, 33652)
    with pytest.raises(ExportCheckError, match=rf"{weights} is damaged \(SafetensorError.*nothing was exported or "
                                               rf"replaced\. The exported copy {copy} was left as it is"):
        _reexport(cfg, run, adapter, monkeypatch)
    assert _tree(run.stage_dir("export")) == before
    shutil.copy2(copy, weights)  # the fix the message names
    run.write_manifest(cfg, "train")
    record = json.loads(run.path("exported").read_text())
    record["source"]["train_finished_at"] = run.read_manifest("train")["finished_at"]
    write_json_atomic(run.path("exported"), record)
    before = _tree(run.stage_dir("export"))
    assert _reexport(cfg, run, adapter, monkeypatch)["source"] == record["source"]  # intact again: reused
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # loads, but is not the adapter this training run recorded
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportCheckError, match="its sha256 is not the .* recorded .* training has not run since"):
        _reexport(cfg, run, adapter, monkeypatch)
    assert _tree(run.stage_dir("export")) == before


def test_temporary_merges_a_killed_export_left_are_removed(tmp_path):
    """A real SIGKILL during the temporary merge leaves atomic_dir's `..merged-for-gguf.<pid>.<rand>.tmp`; the
    next export removes it and the older forms, and says so."""
    import signal
    import subprocess
    import sys

    script = ("import time; from pathlib import Path; from r1helpers.core.runs import atomic_dir\n"
              f"with atomic_dir(Path({str(tmp_path)!r}) / {export_setup.MERGED_FOR_GGUF!r}) as tmp:\n"
              "    (tmp / 'model.safetensors').write_bytes(b'half'); print('writing', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed = [p.name for p in tmp_path.iterdir()]
    assert len(killed) == 1 and killed[0].startswith(f".{export_setup.MERGED_FOR_GGUF}.{child.pid}.")
    older = ["..merged-for-gguf-abc123.4242.x1y2.tmp", ".merged-for-gguf-abc123"]
    for name in older:
        (tmp_path / name).mkdir()
    (tmp_path / "gguf").mkdir()
    notes = export_setup.remove_stale_merges(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["gguf"]
    assert sorted(notes) == sorted(f"removed {n}, a temporary merge left by an interrupted export"
                                   for n in killed + older)


@pytest.mark.slow
def test_space_refusal_advises_only_settings_that_would_make_it_fit(exported, cfg, tmp_path, monkeypatch):
    """2 MB free with export.gguf=[] and save_merged_16bit=false already set: no advice to set them. Where
    dropping the GGUF files would make it fit, that (and only that) is advised."""
    monkeypatch.setattr(space, "free_bytes", lambda path: 2 * 10**6)
    lean = apply_overrides(cfg, {"export.gguf": [], "export.save_merged_16bit": False,
                                 "export.output_dir": str(tmp_path / "out")})
    monkeypatch.setattr(train_stage, "ensure_trained", lambda *a, **k: train_stage.TrainResult(exported.adapter, [], {}))
    with pytest.raises(export.ExportSpaceError) as refused:
        export.begin(lean, Run.open(tmp_path / "run"))
    assert "export.gguf" not in str(refused.value) and "save_merged_16bit" not in str(refused.value)
    assert "only 2.0 MB is free" in str(refused.value)
    items = space.plan_sizes(tmp_path, 10**9, 10**7, keep_merged=True, gguf_kinds=["q8_0"], merged_dtype="float16")
    without_gguf = space.plan_sizes(tmp_path, 10**9, 10**7, keep_merged=True, gguf_kinds=[], merged_dtype="float16")
    monkeypatch.setattr(space, "free_bytes", lambda path: int(2.5e9))
    with pytest.raises(export.ExportSpaceError, match=r"Or export less: export\.gguf=\[\] would fit\.$"):
        space.check_space(items, {"export.gguf=[]": without_gguf, "export.save_merged_16bit=false": items})


def test_the_card_names_a_local_dataset_by_file_name_and_sha256_never_its_path(cfg, tmp_path):
    rows = tmp_path / "private" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text('{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n')
    run = Run.open(tmp_path / "run")
    card = workflow_hub.card(apply_overrides(cfg, {"data.source": str(rows)}), run, "adapter", [("a", 1)])
    assert f"Dataset: local file `rows.jsonl` (sha256 `{_sha256(rows)}`)" in card
    assert str(tmp_path) not in card and "datasets:" not in card
    on_hub = apply_overrides(cfg, {"data.source": "FreedomIntelligence/medical-o1-reasoning-SFT"})
    card = workflow_hub.card(on_hub, run, "adapter", [("a", 1)])
    assert "datasets:\n- FreedomIntelligence/medical-o1-reasoning-SFT\n" in card
    assert "Dataset: `FreedomIntelligence/medical-o1-reasoning-SFT`" in card


def _probe(margin: float, base_shift: float = 3.0):
    """One prompt of 2 tokens and 2 greedy tokens (3, 4) over a vocabulary of 5; at the last greedy token the
    reference prefers 4 over 2 by `margin`. The base model's logits are the reference's minus `base_shift` on
    token 0 (the adapter's effect)."""
    logits = np.zeros((4, 5), dtype=np.float32)
    logits[:, 0] = 10.0  # a wide logit range, as real models have
    logits[1, 0], logits[1, 3] = 0.0, 1.0  # picks 3
    logits[2, 0], logits[2, 4], logits[2, 2] = 0.0, 1.0, 1.0 - margin  # picks 4, then 2 is `margin` behind
    base = logits.copy()
    base[:, 0] -= base_shift
    return export_checks.Probe([1, 2], [3, 4], logits, base)


@pytest.mark.parametrize("margin, diff, passes", [(0.004, 0.003, True), (0.5, 0.003, False)],
                         ids=["near-tie", "clear-margin"])
def test_greedy_flip_is_allowed_only_at_a_near_tie_of_the_reference(margin, diff, passes):
    """A candidate within the logit tolerance that picks token 2 instead of 4: a near tie of the reference (margin
    within 2 x the measured logit difference) passes and is counted; a clear margin is a real difference."""
    probe = _probe(margin)
    cand = probe.logits.copy()
    cand[2, 2] += diff
    result = export_checks.compare([probe], [cand], [[3, 2]])
    assert result["greedy_divergences"] == [{"prompt": 0, "token": 1, "reference_margin": pytest.approx(margin, abs=1e-6)}]
    if passes:
        assert export_checks.judge("merged", result, "m")["greedy_near_ties"] == 1
    else:
        with pytest.raises(export_checks.ExportCheckError, match="not a near tie"):
            export_checks.judge("merged", result, "m")


def test_a_merge_that_loses_part_of_the_adapter_fails_even_with_identical_greedy_tokens():
    """Logits 0.15 away from base + adapter where the adapter moved them by 1.0: within 2% of the logit range,
    same greedy tokens, but 15% of the adapter's effect is gone."""
    probe = _probe(0.5, base_shift=1.0)
    cand = probe.logits.copy()
    cand[:, 0] -= 0.15
    result = export_checks.compare([probe], [cand], [[3, 4]])
    assert result["greedy_identical"] and result["relative_logit_diff"] < 0.02
    assert result["adapter_residual_share"] == pytest.approx(0.15, abs=1e-6)
    with pytest.raises(export_checks.ExportCheckError, match="lost part of the adapter"):
        export_checks.judge("merged", result, "m")
    cand[:, 0] += 0.1  # 5% of the effect left out: passes
    assert export_checks.judge("merged", export_checks.compare([probe], [cand], [[3, 4]]), "m")["passed"]


def test_gguf_weight_and_readback_checks_run_side_by_side(monkeypatch, tmp_path):
    """check_one_gguf runs the weight check in a thread beside transformers' read-back (each waits for the other
    here, so run one after the other they would never finish), keeps both results, and when both fail raises the
    weight check's error."""
    import contextlib
    import threading

    from r1helpers.core.config import load_config

    ec, wx = export_checks, export_gguf_checks
    both = threading.Barrier(2, timeout=20)
    ctx = SimpleNamespace(cfg=load_config("cpu"), tokenizer=None, prompt_texts=[],
                          timed=lambda step: contextlib.nullcontext())
    monkeypatch.setattr(export_gguf_checks, "gguf_metadata_check", lambda *a: {"tokens": 1, "reader": a[-1]})
    monkeypatch.setattr(export_gguf_checks, "float32_parameters", lambda *a: 1)
    import gguf

    parsed = []

    def reader(path):  # the real one parses the file; here there is none
        parsed.append(path)
        return f"parsed {path}"

    monkeypatch.setattr(gguf, "GGUFReader", reader)

    def weights(*a, reader=None):
        both.wait()
        return {"tensors": 3, "reader": reader}

    def readback(*a, **kw):
        both.wait()
        return {"passed": True}

    monkeypatch.setattr(export_gguf_checks, "gguf_weight_check", weights)
    monkeypatch.setattr(export_gguf_checks, "check_gguf_transformers", readback)
    checks = wx.check_one_gguf(ctx, tmp_path / "m.gguf", "q8_0", tmp_path, probes=["probe"])
    assert checks["weights"]["tensors"] == 3 and checks["transformers"] == {"passed": True}
    assert parsed == [str(tmp_path / "m.gguf")]  # one parse for all the checks of the file
    assert checks["weights"]["reader"] == checks["metadata"]["reader"] == f"parsed {parsed[0]}"

    def wrong_weights(*a, **kw):
        raise ec.ExportCheckError("blk.0.attn_q.weight is off")

    def wrong_readback(*a, **kw):
        raise ec.ExportCheckError("logits differ")

    monkeypatch.setattr(export_gguf_checks, "gguf_weight_check", wrong_weights)
    monkeypatch.setattr(export_gguf_checks, "check_gguf_transformers", wrong_readback)
    with pytest.raises(ec.ExportCheckError, match="attn_q.weight is off"):
        wx.check_one_gguf(ctx, tmp_path / "m.gguf", "q8_0", tmp_path, probes=["probe"])
    monkeypatch.setattr(export_gguf_checks, "gguf_weight_check", lambda *a, **kw: {"tensors": 3})
    with pytest.raises(ec.ExportCheckError, match="logits differ"):
        wx.check_one_gguf(ctx, tmp_path / "m.gguf", "q8_0", tmp_path, probes=["probe"])


# ---- issue 26: what each export keeps of the fine-tune ------------------------------------------------------

def test_share_of_the_adapter_effect_kept_is_one_for_a_faithful_export_and_zero_for_the_base():
    """share kept = 1 - |exported - tuned| / |tuned - base|: base + adapter itself keeps 100%, the base model (an
    adapter scaled by 0) 0%, half the adapter 50%; a constant added to a position's logits changes no probability
    and costs nothing; noise across the adapter's direction lowers the share kept but not the projection."""
    ec = export_checks
    probe = _probe(0.5, base_shift=1.0)
    tuned, base = probe.logits, probe.base_logits
    kept = ec.effect_kept([probe], [tuned.copy()])
    assert kept["share_kept"] == 1.0 and kept["projection"] == 1.0 and kept["per_prompt"] == [1.0]
    assert ec.effect_kept([probe], [tuned + 7.0])["share_kept"] == 1.0
    lost = ec.effect_kept([probe], [base.copy()])
    assert lost["share_kept"] == 0.0 and lost["projection"] == 0.0
    half = ec.effect_kept([probe], [(tuned + base) / 2])
    assert half["share_kept"] == pytest.approx(0.5, abs=1e-4) and half["projection"] == pytest.approx(0.5, abs=1e-4)
    noise = np.random.default_rng(0).normal(0, 1, tuned.shape)
    effect = ec._centred(tuned) - ec._centred(base)
    noise -= (noise * effect).sum() / (effect * effect).sum() * effect  # across the adapter's direction
    noisy = ec.effect_kept([probe], [tuned + 0.3 * noise])
    assert noisy["share_kept"] < 0.9 and noisy["projection"] == pytest.approx(1.0, abs=1e-3)
    assert ec.effect_kept([ec.Probe([1], [2], tuned)], [tuned]) is None  # no base logits: not base + adapter
    assert ec.effect_kept([ec.Probe([1], [2], tuned, tuned.copy())], [tuned])["share_kept"] is None  # no effect

    assert "warning" not in export_parity.judge_effect(kept, "m", warn=0.8, minimum=None)
    assert "keeps only 50.0%" in export_parity.judge_effect(half, "m", warn=0.8, minimum=None)["warning"]
    with pytest.raises(ec.ExportCheckError, match=r"m keeps 0\.0% of the adapter's own effect.*effect_kept_min=0\.5"):
        export_parity.judge_effect(lost, "m", warn=0.8, minimum=0.5)


def test_accuracy_parity_fails_a_significant_drop_naming_the_artefact_and_what_to_do():
    """24 questions: an export that gets 7 of the adapter's right answers wrong (and none the other way) is a
    significant drop (exact McNemar p = 2 x 0.5^7 = 0.016); 5 of them (p = 0.0625) is not; equal answers pass."""
    ec = export_checks
    rows = [{"id": str(i), "answer_idx": "A", "options": {"A": "a", "B": "b"}} for i in range(24)]
    adapter = ["A"] * 20 + ["B"] * 4
    same = export_parity.accuracy_parity(rows, adapter, adapter, "x", "do y")
    assert same["passed"] and same["delta"] == 0 and same["answers_differ"] == 0
    five = export_parity.accuracy_parity(rows, adapter, ["B"] * 5 + adapter[5:], "x", "do y")
    assert five["verdict"] == "no clear change" and five["mcnemar"] == {"lost": 5, "gained": 0, "p_value": 0.0625}
    with pytest.raises(ec.ExportCheckError) as e:
        export_parity.accuracy_parity(rows, adapter, ["B"] * 7 + adapter[7:], "model-q4_k_m.gguf (GGUF q4_k_m)",
                           export_parity.accuracy_advice("q4_k_m"), "r1helpers/sample-mcq")
    text = str(e.value)
    assert text.startswith("model-q4_k_m.gguf (GGUF q4_k_m) answers fewer of the 24 multiple-choice questions of "
                           "r1helpers/sample-mcq right than base + adapter")
    assert "13/24 against 20/24 (-29.2 points; 7 questions lost, 0 gained; exact McNemar p = 0.0156" in text
    assert 'export the GGUF in f16 (export.gguf=["f16"])' in text and "\n" not in text


def test_a_faithful_export_keeps_the_adapters_effect_and_its_accuracy(exported, cfg):
    """The tiny model's float16 merge and f16 GGUF keep ~100% of the adapter's effect on the probe logits and
    answer the multiple-choice set as base + adapter does; exported.json, the checks table and the cards say so."""
    from r1helpers.export import summary

    record = exported.record
    merged = record["artefacts"]["merged"]["checks"]
    assert merged["adapter_effect_kept"]["share_kept"] > 0.99 and merged["adapter_effect_kept"]["projection"] > 0.99
    assert merged["accuracy_vs_adapter"]["passed"] and merged["accuracy_vs_adapter"]["verdict"] == "no clear change"
    files = record["artefacts"]["gguf"]["files"]
    assert files["f16"]["checks"]["adapter_effect_kept"]["share_kept"] > 0.99
    assert files["q8_0"]["checks"]["adapter_effect_kept"]["share_kept"] is not None
    assert files["f16"]["checks"]["accuracy_vs_adapter"]["passed"]
    parity = record["parity"]
    acc = parity["accuracy"]
    assert acc["questions"] == cfg.compare.mcq_rows and acc["source"] == cfg.compare.mcq_source
    assert set(acc["by_model"]) == {"base", "adapter", "merged_16bit", "gguf f16", "gguf q8_0"}
    assert len(acc["answers"]["adapter"]) == len(acc["gold"]) == acc["questions"]
    assert acc["by_model"]["merged_16bit"]["correct"] == acc["by_model"]["adapter"]["correct"]
    assert set(parity["effect_kept"]) == {"merged_16bit", "gguf f16", "gguf q8_0"}
    adapter_checks = record["artefacts"]["adapter"]["checks"]["accuracy"]
    assert adapter_checks["adapter_correct"] == acc["by_model"]["adapter"]["correct"]
    table = summary.summary_table(record)
    assert "keeps 99." in table.loc["merged", "checks"]
    assert "accuracy_vs_adapter" in table.loc["gguf f16", "status"]
    assert " vs the adapter's " in table.loc["gguf f16", "checks"]
    parity_rows = summary.parity_table(record)
    assert parity_rows.loc["merged_16bit", "adapter effect kept"] > 0.99
    assert parity_rows.loc["base + adapter (reference)", "right"] == f"{adapter_checks['adapter_correct']}/24"
    assert "merged: adapter effect kept" in summary.key_results(record)
    card = (Path(record["artefacts"]["merged"]["path"]) / "README.md").read_text()
    assert '"adapter_effect_kept"' in card and '"accuracy_vs_adapter"' in card


def _zeroed_adapter(src: Path, dst: Path) -> Path:
    """A copy of the adapter with every lora_B at 0: merged, it gives the base model (the adapter scaled by 0)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = load_file(str(dst / "adapter_model.safetensors"))
    save_file({k: v * 0 if "lora_B" in k else v for k, v in weights.items()}, str(dst / "adapter_model.safetensors"))
    return dst


def test_an_export_that_loses_the_adapter_keeps_none_of_its_effect_and_fails_parity(exported, cfg, monkeypatch,
                                                                                       tmp_path):
    """The "merged model" is the base with the adapter scaled by 0. Its logit check fails already and names the
    share kept, 0%. With the logit tolerances opened wide, the accuracy parity catches it: on the multiple-choice
    questions where base + adapter and the base answer differently, relabelled so that base + adapter is right,
    it loses every one, a significant drop; with export.effect_kept_min set, the share kept fails first."""
    from r1helpers.export import checks as ec
    from r1helpers.export import merge
    from r1helpers.export.files import save_tokenizer
    from r1helpers.export.merge import merge_lora

    # the weight check compares the merge with base + B·A and would stop this one first; here it is off
    monkeypatch.setattr(merge, "weight_check", lambda *a: {"tensors": 0, "max_error_in_rounding_units": 0})
    job = _job(exported, cfg, ["float16"], mcq=True)
    adapter, base = job.answers["adapter"], job.answers["base"]
    differ = [i for i, (a, b) in enumerate(zip(adapter, base)) if a != b]
    assert len(differ) >= 6, "the tiny model's adapter must change at least 6 answers for a significant drop"
    job.mcq = [{**job.mcq[i], "answer_idx": adapter[i]} for i in differ]
    job.answers = {"adapter": [adapter[i] for i in differ], "base": [base[i] for i in differ]}
    zeroed = _zeroed_adapter(job.out / "adapter", tmp_path / "zeroed")

    def lossy_merge():
        with job.writing("merged_16bit") as folder:
            merge_lora(job.base_dir, zeroed, folder, job.dtype)
            save_tokenizer(job.tokenizer, folder)
            job.check_merged(folder)
        assert job.merged_dir is None and "use the adapter on the base model" in job.notes[-1]
        return job.notes[-1]

    assert re.search(r"it keeps -?0\.\d% of the adapter's effect on the probe logits", lossy_merge())

    monkeypatch.setitem(ec.LOGIT_TOL, "merged", 10.0)
    monkeypatch.setattr(ec, "ADAPTER_KEPT_TOL", 10.0)
    monkeypatch.setattr(ec, "EXACT_GREEDY", ())
    note = lossy_merge()
    assert job.kept["merged_16bit"]["share_kept"] == pytest.approx(0.0, abs=0.01)
    assert "keeps only" in job.kept["merged_16bit"]["warning"]
    n = len(differ)
    right = sum(a == b for a, b in zip(job.answers["merged_16bit"], job.answers["adapter"]))
    assert right <= n - 6
    assert f"the merged float16 model answers fewer of the {n} multiple-choice questions" in note
    assert f"{right}/{n} against {n}/{n}" in note and "merge in float16" in note

    job.cfg.export.effect_kept_min = 0.5
    assert "below export.effect_kept_min=0.5" in lossy_merge()
