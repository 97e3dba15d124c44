"""Training killed mid-run resumes from its latest complete checkpoint and ends where an
uninterrupted run ends; unfinished checkpoints are never resumed from.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_resume.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1helpers.core.config import ConfigError, load_config
from r1helpers.core.runs import Run, RunFolderConflict, stage_fingerprint
from r1helpers.training.sft import latest_checkpoint
from r1helpers.workflow.train_stage import _checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]

# What notebook 03 runs (start, prepare, ensure_trained_anywhere), in a process the test can kill. It counts
# the micro-batches it trains on; a sleep in each (numerically inert) leaves time to kill it after
# the first checkpoint.
WORKER = """
import json, sys, time
run_dir, sleep, overrides = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
import trl
calls = []
step = trl.SFTTrainer.training_step
def counted_step(self, *a, **k):
    calls.append(1)
    time.sleep(sleep)
    return step(self, *a, **k)
trl.SFTTrainer.training_step = counted_step
import r1helpers
from r1helpers import data
from r1helpers import distributed
from r1helpers.workflow import data_stage
cfg, run = r1helpers.start(run_dir, "cpu", overrides, quiet=True)
result = distributed.ensure_trained_anywhere(cfg, run, data_stage.prepare(cfg, run))
print(f"TRAINING STEPS RUN {len(calls)}", flush=True)
"""

# 24 rows / batch 4 = 6 steps an epoch: 12 steps cross an epoch boundary, where the sampler
# reshuffles. Rows cut to 128 tokens keep each step short on a busy CPU.
OVERRIDES = {
    "data.train_rows": 24, "data.eval_rows": 4, "train.max_steps": 12, "train.save_steps": 4,
    "train.logging_steps": 1, "train.eval_steps": 0, "train.wandb": "off",
    "model.max_seq_length": 128, "data.overlong": "truncate",
}
# Measured on CPU (fp32): resumed and uninterrupted runs agree bit for bit (0.0). The bound leaves
# room for summation-order noise of other CPU kernels, far below one optimizer step's change (~1e-3).
ATOL = 1e-6


def _worker(run_dir: Path, sleep: float = 0.0, **extra) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "R1HELPERS_HEADLESS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(run_dir), str(sleep), json.dumps({**OVERRIDES, **extra})],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _kill_after_checkpoint(run_dir: Path, timeout: float = 600) -> tuple[str, Path]:
    """Start training, wait for a complete checkpoint, then SIGKILL it as a dropped session would."""
    proc = _worker(run_dir, sleep=0.5)
    ckpts = run_dir / "train" / "checkpoints"
    deadline = time.monotonic() + timeout
    while latest_checkpoint(ckpts) is None:
        assert proc.poll() is None, f"worker ended before a checkpoint: {proc.communicate()[0][-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next step, so the kill lands mid-training
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "train" / "adapter").exists(), "training finished before the kill: raise the sleep"
    return out, latest_checkpoint(ckpts)


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train" / "adapter" / "adapter_model.safetensors"))


def _history(run_dir: Path) -> dict[int, dict]:
    history = json.loads((run_dir / "train" / "log_history.json").read_text())
    return {r["step"]: r for r in history if "loss" in r}


def _max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _max_log_diff(a: dict[int, dict], b: dict[int, dict], after: int) -> float:
    steps = [s for s in b if s > after]
    assert steps and all(s in a for s in steps), (sorted(a), sorted(b))
    return max(abs(a[s][k] - b[s][k]) for s in steps for k in ("loss", "grad_norm", "learning_rate"))


@pytest.mark.slow
def test_killed_training_resumes_and_matches_uninterrupted(tmp_path):
    straight = _worker(tmp_path / "straight")  # runs alongside the interrupted one
    killed_out, ckpt = _kill_after_checkpoint(tmp_path / "resumed")
    step = int(ckpt.name.rsplit("-", 1)[-1])
    shutil.copytree(tmp_path / "resumed", tmp_path / "over")

    resumed, over = _worker(tmp_path / "resumed"), _worker(tmp_path / "over", **{"train.resume": False})
    resumed_out, over_out, straight_out = _finish(resumed), _finish(over), _finish(straight)
    # Accumulation is 1 in the CPU profile: one micro-batch per step.
    assert "TRAINING STEPS RUN 12" in straight_out and "TRAINING STEPS RUN 12" in over_out
    assert f"TRAINING STEPS RUN {12 - step}" in resumed_out, resumed_out[-2000:]

    metrics = json.loads((tmp_path / "resumed" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from"] == ckpt.name and f"resuming from {ckpt.name}" in resumed_out
    over = json.loads((tmp_path / "over" / "train" / "metrics.json").read_text())
    assert over["resumed_from"] is None and "starting over" in over_out

    reference, history = _adapter(tmp_path / "straight"), _history(tmp_path / "straight")
    weight_diff = _max_weight_diff(_adapter(tmp_path / "resumed"), reference)
    log_diff = _max_log_diff(history, _history(tmp_path / "resumed"), after=step)
    print(f"resumed from step {step}: max |adapter diff| {weight_diff:.3g}, max |loss/grad/lr diff| {log_diff:.3g}")
    assert weight_diff <= ATOL and log_diff <= ATOL
    assert _max_weight_diff(_adapter(tmp_path / "over"), reference) <= ATOL
    assert sorted(_history(tmp_path / "resumed")) == sorted(history) == list(range(1, 13))
    # The resumed run reports the whole run: the mean of every logged loss, and both sessions' time.
    straight_metrics = json.loads((tmp_path / "straight" / "train" / "metrics.json").read_text())
    assert abs(metrics["train_loss"] - straight_metrics["train_loss"]) <= 1e-4
    assert metrics["seconds"] > metrics["seconds_this_session"] > 0


def _fake_checkpoint(ckpt_dir: Path, step: int, state: str | None = None, adapter: bool = True) -> Path:
    p = ckpt_dir / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if adapter:
        (p / "adapter_model.safetensors").write_bytes(b"weights")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):  # what a resume reads besides the adapter
        (p / name).write_bytes(b"state")
    (p / "trainer_state.json").write_text(state if state is not None else json.dumps({"global_step": step}))
    return p


def test_latest_checkpoint_skips_unfinished_ones(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert latest_checkpoint(ckpts) is None
    good = _fake_checkpoint(ckpts, 10)
    _fake_checkpoint(ckpts, 20, state='{"global_step": 2')  # killed while writing the state
    _fake_checkpoint(ckpts, 30, adapter=False)  # killed before the adapter landed
    _fake_checkpoint(ckpts, 40, state=json.dumps({"global_step": 39}))  # not this checkpoint's state
    (ckpts / "checkpoint-50").mkdir()  # killed right after mkdir
    assert latest_checkpoint(ckpts) == good
    assert latest_checkpoint(ckpts) == good
    assert latest_checkpoint(tmp_path) is None


def test_checkpoints_kept_resumed_refused_or_moved_aside(tmp_path):
    run = Run.open(tmp_path / "run")
    cfg = load_config("cpu")
    ckpts, resume_from = _checkpoint_dir(cfg, run, resume=True)
    assert resume_from is None
    _fake_checkpoint(ckpts, 8)
    # Same settings: resumed. The checkpoint interval is not a setting of the result.
    assert _checkpoint_dir(load_config("cpu", {"train.save_steps": 3}), run, True)[1] == ckpts / "checkpoint-8"
    # Other settings: refused, naming the field, and the checkpoints stay where they are.
    with pytest.raises(RunFolderConflict, match=r"fields that differ: train\.learning_rate"):
        _checkpoint_dir(load_config("cpu", {"train.learning_rate": 1e-3}), run, True)
    assert (ckpts / "checkpoint-8").is_dir()
    # Start over on request: moved aside, never deleted.
    assert _checkpoint_dir(cfg, run, resume=False)[1] is None and not (ckpts / "checkpoint-8").exists()
    assert len(list((run.root / "replaced").glob("checkpoints-*/checkpoint-8"))) == 1
    # Other settings with overwrite: moved aside too.
    _fake_checkpoint(ckpts, 8)
    run.overwrite = True
    assert _checkpoint_dir(load_config("cpu", {"train.learning_rate": 1e-3}), run, True)[1] is None
    assert len(list((run.root / "replaced").glob("checkpoints-*/checkpoint-8"))) == 2


def test_resume_and_interval_are_not_part_of_the_fingerprint():
    cfg = load_config("cpu")
    other = load_config("cpu", {"train.resume": False, "train.save_steps": 1})
    for stage in ("train", "finetuned", "compare", "export"):
        assert stage_fingerprint(cfg, stage) == stage_fingerprint(other, stage)
    assert stage_fingerprint(cfg, "train") != stage_fingerprint(load_config("cpu", {"train.max_steps": 5}), "train")


def test_resume_and_checkpoint_defaults():
    seed = load_config("seed").train
    # Six checkpoints over the recipe's 60 steps: a dropped Kaggle session loses at most 9 steps.
    assert seed.resume is True and seed.save_steps == 10 and seed.max_steps // seed.save_steps == 6
    assert load_config("seed", {"resume": "false"}).train.resume is False  # papermill / --set text
    with pytest.raises(ConfigError, match=r"train\.resume"):
        load_config("seed", {"train.resume": "maybe"})
    with pytest.raises(ConfigError, match=r"train\.save_steps"):
        load_config("seed", {"train.save_steps": -1})
