"""Out of memory and interruptions: generation retries with smaller batches, training explains
what to change, and an interrupted save leaves the previous good output in place.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_oom.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import torch

from r1helpers.inference import generate as infer
from r1helpers.core.config import load_config
from r1helpers.data_sources import load_sample_rows
from r1helpers.workflow.data_stage import prepare
from r1helpers.core.runs import Run, write_text_atomic
from r1helpers.inference import choose
from r1helpers.workflow import train_stage

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total capacity)"


@pytest.fixture(scope="module")
def small_cfg():
    return load_config("cpu", {
        "infer.batch_size": 4, "infer.max_new_tokens": 6, "data.train_rows": 8, "data.eval_rows": 2,
        "train.max_steps": 2, "train.save_steps": 0, "train.eval_steps": 0, "train.wandb": "off",
        "model.max_seq_length": 128, "data.overlong": "truncate",
    })


@pytest.fixture(scope="module")
def base(tiny_model_dir, small_cfg):
    from r1helpers.modeling.load import for_inference

    return for_inference(choose.load_base_for(small_cfg))


def _generate(base, questions, cfg, **over):
    return infer.generate(base.model, base.tokenizer, questions, **{**choose.generation_kwargs(cfg), "progress": False,
                                                                   **over})


def _questions(n: int = 5) -> list[str]:
    return [r["Question"] for r in load_sample_rows()[:n]]


class FlakyGenerate:
    """Stands in for model.generate: raises `error` for batches larger than `fits`, records sizes."""

    def __init__(self, real, fits: int, error: BaseException) -> None:
        self.real, self.fits, self.error, self.sizes = real, fits, error, []

    def __call__(self, **kwargs):
        self.sizes.append(kwargs["input_ids"].shape[0])
        if self.sizes[-1] > self.fits:
            raise self.error
        return self.real(**kwargs)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError(CUDA_OOM), RuntimeError("CUDA error: out of memory")])
@pytest.mark.slow
def test_generation_halves_the_batch_and_matches(base, small_cfg, monkeypatch, capsys, error):
    questions = _questions()
    reference = _generate(base, questions, small_cfg, batch_size=2)
    flaky = FlakyGenerate(base.model.generate, fits=2, error=error)
    monkeypatch.setattr(base.model, "generate", flaky)
    results = _generate(base, questions, small_cfg)
    assert flaky.sizes == [4, 2, 2, 1]  # one failed batch of 4, then the same batches as the reference
    assert "out of memory at batch 4: retrying with batch 2" in capsys.readouterr().out
    strip = lambda rs: [{k: v for k, v in r.items() if k != "batch_seconds"} for r in rs]  # noqa: E731
    assert strip(results) == strip(reference)


def test_generation_oom_at_one_question_says_what_to_change(base, small_cfg, monkeypatch):
    monkeypatch.setattr(base.model, "generate", FlakyGenerate(base.model.generate, 0, torch.OutOfMemoryError(CUDA_OOM)))
    with pytest.raises(RuntimeError, match=r"infer\.max_new_tokens.*model\.load_in_4bit") as info:
        _generate(base, _questions(3), small_cfg)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_other_generation_errors_are_not_retried(base, small_cfg, monkeypatch):
    flaky = FlakyGenerate(base.model.generate, 0, RuntimeError("expected scalar type Half"))
    monkeypatch.setattr(base.model, "generate", flaky)
    with pytest.raises(RuntimeError, match="expected scalar type Half"):
        _generate(base, _questions(3), small_cfg)
    assert flaky.sizes == [3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tokenizer, small_cfg):
    """A run folder with a finished adapter, and the peft model that made it."""
    run = Run.open(tmp_path_factory.mktemp("oom") / "run")
    prepared = prepare(small_cfg, run, tokenizer)
    loaded = train_stage.with_lora(small_cfg, choose.load_base_for(small_cfg))
    train_stage.train(small_cfg, run, loaded, prepared)
    return run, loaded, prepared


@pytest.mark.slow
def test_training_oom_explains_the_settings(trained, small_cfg, monkeypatch):
    import trl

    run, loaded, prepared = trained

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(trl.SFTTrainer, "train", oom)
    with pytest.raises(RuntimeError) as info:
        train_stage.train(small_cfg, run, loaded, prepared)
    message = str(info.value)
    for needed in ("CUDA out of memory in training", "micro-batch 4", "model.max_seq_length=128",
                   "train.per_device_train_batch_size", "train.gradient_accumulation_steps",
                   "model.load_in_4bit=true", "lora.gradient_checkpointing"):
        assert needed in message
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


@pytest.mark.slow
def test_other_training_errors_pass_through(trained, small_cfg, monkeypatch):
    import trl

    run, loaded, prepared = trained

    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(trl.SFTTrainer, "train", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train_stage.train(small_cfg, run, loaded, prepared)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _half_save(*args, **kwargs):
    """Writes part of a weights file, then the user presses stop."""
    out = Path(kwargs.get("save_directory") or args[-1])
    (out / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_adapter_save_keeps_the_previous_adapter(trained, small_cfg, monkeypatch):
    run, loaded, prepared = trained
    out = run.stage_dir("train")
    adapter, before = out / "adapter", _snapshot(out / "adapter")
    kept = {name: (out / name).read_bytes() for name in ("metrics.json", "log_history.json", "manifest.json")}
    assert "adapter_model.safetensors" in before
    monkeypatch.setattr(loaded.model, "save_pretrained", _half_save)
    with pytest.raises(KeyboardInterrupt):
        train_stage.train(small_cfg, run, loaded, prepared)
    assert _snapshot(adapter) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert run.is_current(small_cfg, "train")


def _export_job(tmp_path, save_merged=True):
    """An ExportJob with only what `writing` uses: the export folder, a config, a timer and a model card writer."""
    from types import SimpleNamespace

    from r1helpers.workflow import export

    job = object.__new__(export.ExportJob)
    job.cfg = SimpleNamespace(export=SimpleNamespace(save_merged_16bit=save_merged))
    job.out, job.merged_dir, job.artefacts, job.extra, job.checks = tmp_path, None, {}, {}, {}
    job.timed = lambda step: contextlib.nullcontext()
    job._card = lambda kind, folder: (folder / "README.md").write_text("card")
    return job


@pytest.mark.parametrize("folder", ["merged_16bit", "gguf"])
def test_an_interrupted_export_step_keeps_the_previous_files(tmp_path, folder):
    """Notebook 05's `with job.writing(folder) as tmp:` a step stopped half-way (the user presses stop while the
    weights are written) leaves the previous folder as it was, and no temporary folder."""
    job = _export_job(tmp_path)
    with job.writing(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"good weights")
    before = _snapshot(tmp_path / folder)
    assert before["model.safetensors"] == hashlib.sha256(b"good weights").hexdigest()
    with pytest.raises(KeyboardInterrupt):
        with job.writing(folder) as tmp:
            (tmp / "model.safetensors").write_bytes(b"\0" * 100)
            raise KeyboardInterrupt
    assert _snapshot(tmp_path / folder) == before
    assert [p.name for p in tmp_path.iterdir()] == [folder], "temporary folders left behind"


def test_interrupted_file_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """Reports, generations, stats and manifests all go through write_text_atomic."""
    path = tmp_path / "report.html"
    write_text_atomic(path, "<p>good</p>")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "<p>half" + "\ud800")  # fails part-way through the write
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "<p>new</p>")
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == "<p>good</p>" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_interrupted_comparison_save_keeps_the_previous_one(tmp_path, monkeypatch):
    """compare/comparison.json: a write cut short (Ctrl-C before the rename) leaves the previous good file whole,
    and no temporary ones."""
    from r1helpers.evaluate import compare
    from r1helpers.core import runs

    out = tmp_path / "compare"
    compare.write_outputs({"page": "good"}, out)
    before = _snapshot(out)

    def interrupted(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runs.os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            compare.write_outputs({"page": "new"}, out)
    assert _snapshot(out) == before and sorted(before) == ["comparison.json"]
