"""Training under DDP (torchrun, one process per GPU) keeps the recipe's effective batch, keeps the
ranks in sync, matches one process, and leaves the run folder to rank 0.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_distributed.py

The slow tests (~45 s on 2 cores) run the documented command, `python -m r1helpers.distributed`,
on the CPU profile: with `--nproc 2` (two processes over gloo, micro-batch 2 x accumulation 2
each, a checkpoint every 2 steps), with `--nproc 1` (this process, micro-batch 2 x accumulation 4),
and again with `--nproc 2` on a copy of the first run cut back to its first checkpoint, which must
resume and end where the uninterrupted run ended (measured: bit for bit). A `sitecustomize` put on
PYTHONPATH (test code only, nothing in r1helpers) makes every process record the files it writes
under the run folder (Python audit events) and dump its LoRA weights and losses when training ends.

Why the two runs must agree, step for step, and not just roughly: the Trainer's sampler is
accelerate's SeedableRandomSampler, seeded with train.seed (+ the epoch) in both runs, so both
draw the same order of examples and cut it into the same micro-batches of 2. With one process,
optimizer step k takes micro-batches 4k..4k+3. With two, accelerate's BatchSamplerShard deals
the micro-batches out in turn (rank 0 gets 0, 2, 4, ...; rank 1 gets 1, 3, 5, ...), so step k
takes 4k and 4k+2 on rank 0 and 4k+1 and 4k+3 on rank 1: the same four micro-batches, padded
the same way. The loss is summed over tokens and divided by the tokens of the whole step, counted
across the ranks (average_tokens_across_devices), and DDP averages the ranks' gradients after
scaling each by the world size; so the gradient is the same sum divided by the same count. Only
the order of floating-point additions differs (gloo's all-reduce; 1 vs 2 threads). LoRA dropout
is 0 in the CPU profile, so no per-rank randomness enters.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1helpers import distributed
from r1helpers.core import config
from r1helpers.core.config import ConfigError, load_config
from r1helpers.core.runs import Run, stage_fingerprint
from r1helpers.core import ddp

ROOT = Path(__file__).resolve().parents[1]

# 16 rows / micro-batch 2 = 8 micro-batches an epoch: the 4 steps of 4 micro-batches cross an
# epoch boundary, where the sampler reshuffles. 128-token rows keep a step short on a busy CPU.
OVERRIDES = {
    "data.train_rows": 16, "data.eval_rows": 4, "train.max_steps": 4, "train.per_device_train_batch_size": 2,
    "train.gradient_accumulation_steps": 4, "train.eval_steps": 0, "train.save_steps": 0, "train.wandb": "off",
    "train.logging_steps": 1, "model.max_seq_length": 128, "data.overlong": "truncate",
}
# Measured on 2 CPU cores, fp32: the ranks agree bit for bit (each applies the same all-reduced
# gradient); two processes differ from one by 1.9e-6 in the LoRA weights (per tensor, |a - b| / |b|)
# and 9.5e-7 in the losses (of ~8): float32 rounding (eps 1.2e-7) after a different order of
# additions, grown a little by 4 Adam steps. Getting the batches wrong is 4 to 5 orders larger:
# another data order (train.seed=1) moves the weights by 0.16 and the losses by 0.022; two
# processes that each kept accumulation 4 (effective batch 16) by 0.19 and 0.058. The bounds sit
# ~50x above the rounding, for other CPUs' kernels, and ~1000x below those mistakes.
WEIGHT_RTOL = 1e-4
LOSS_ATOL = 1e-4

# Installed in every process of the launch through PYTHONPATH. It runs before r1helpers is
# imported, records run-folder writes with an audit hook, and wraps trl.SFTTrainer (once trl is
# imported) with a callback that dumps the rank's LoRA weights and losses at the end of training.
SITECUSTOMIZE = r'''
import atexit, importlib.abc, importlib.util, json, os, sys

_DUMP = os.environ["R1HELPERS_TEST_DUMP"]
_RUN = os.path.abspath(os.environ["R1HELPERS_TEST_RUN"]) + os.sep
_WHO = ("rank" + os.environ["RANK"]) if "RANK" in os.environ else "launcher"
_WRITES = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _record(path):
    if isinstance(path, (str, bytes, os.PathLike)):
        full = os.path.abspath(os.fsdecode(path))
        if (full + os.sep).startswith(_RUN):
            _WRITES.append(full[len(_RUN):])


def _audit(event, args):
    if event == "open":
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS):
            _record(path)
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "os.symlink", "os.link"):
        _record(args[0])
    elif event == "os.rename":
        _record(args[0])
        _record(args[1])


sys.addaudithook(_audit)


@atexit.register
def _save_writes():
    with open(os.path.join(_DUMP, f"writes-{_WHO}-{os.getpid()}.json"), "w") as f:
        json.dump(sorted(set(_WRITES)), f)


def _patch_trl(trl):
    import torch
    import torch.distributed as dist
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    class Dump(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
            save_file(weights, os.path.join(_DUMP, f"lora-{_WHO}.safetensors"))
            info = {"losses": [r["loss"] for r in state.log_history if "loss" in r],
                    "world_size": args.world_size, "parallel_mode": str(args.parallel_mode),
                    "backend": dist.get_backend() if dist.is_initialized() else None,
                    "micro_batch": args.per_device_train_batch_size,
                    "accumulation": args.gradient_accumulation_steps}
            with open(os.path.join(_DUMP, f"info-{_WHO}.json"), "w") as f:
                json.dump(info, f)

    init = trl.SFTTrainer.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        self.add_callback(Dump())

    trl.SFTTrainer.__init__ = patched


class _AfterTrl(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "trl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch_trl(sys.modules[name])  # trl's lazy module, which replaced `module` while it ran

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AfterTrl())
'''


# ---------------------------------------------------------------- effective batch, without processes

def test_accumulation_is_divided_among_processes():
    assert config.per_process_accumulation(2, 4, 1) == 4
    assert config.per_process_accumulation(2, 4, 2) == 2  # 2 x 2 x 2 = 8 = 2 x 4, the recipe's batch
    assert config.per_process_accumulation(2, 4, 4) == 1
    cfg = load_config("seed")
    split = ddp.per_process(cfg, 2)
    assert split.train.gradient_accumulation_steps == 2 and split.train.per_device_train_batch_size == 2
    assert cfg.train.gradient_accumulation_steps == 4, "the config itself is left as set"
    assert ddp.per_process(load_config("seed", {"train.processes": 2})).train.gradient_accumulation_steps == 4
    assert ddp.per_process(load_config("seed", {"train.processes": 2}), 2).train.processes == 1


def test_uneven_split_is_refused_naming_the_fields():
    with pytest.raises(ConfigError) as e:
        config.per_process_accumulation(2, 4, 3)
    msg = str(e.value)
    assert "train.gradient_accumulation_steps=4" in msg and "train.per_device_train_batch_size=2" in msg
    assert "3 processes" in msg and "train on 1, 2 or 4 processes" in msg and "train.processes" in msg
    with pytest.raises(ConfigError, match=r"train\.gradient_accumulation_steps=4 does not divide among 3"):
        load_config("seed", {"train.processes": 3})  # before any model loads
    with pytest.raises(ConfigError, match=r"train\.processes"):
        load_config("seed", {"train.processes": -1})


def test_processes_is_not_part_of_the_fingerprint():
    cfg = load_config("cpu")
    assert cfg.train.processes == 1
    two = load_config("cpu", {"train.processes": 0})
    for stage in ("train", "finetuned", "compare", "export"):
        assert stage_fingerprint(cfg, stage) == stage_fingerprint(two, stage)


def test_process_count_from_the_visible_gpus():
    assert distributed.resolve_processes(0, ["0", "1"]) == 2
    assert distributed.resolve_processes(None, []) == 1, "no GPU: one process"
    assert distributed.resolve_processes(2, []) == 2, "without CUDA, N processes over gloo"
    with pytest.raises(ConfigError, match="only 2 GPUs"):
        distributed.resolve_processes(4, ["0", "1"])
    pinned = {"CUDA_VISIBLE_DEVICES": "0", "R1HELPERS_GPUS_BEFORE_PIN": "0,1"}  # after env.pin_first_gpu
    assert distributed.visible_gpus(pinned) == ["0", "1"]
    assert distributed.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert distributed.visible_gpus({}, smi=lambda: [object()] * 3) == ["0", "1", "2"]


def test_launch_passes_the_environment_never_secrets_as_arguments(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "0", "R1HELPERS_GPUS_BEFORE_PIN": "0,1", "HF_TOKEN": "hf_secret",
               "WANDB_API_KEY": "wandb_secret", "PYTHONPATH": "/elsewhere"}
    env = distributed.child_environment(environ)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1", "the GPUs the notebook hid are shown to the processes"
    assert env["HF_TOKEN"] == "hf_secret" and env["WANDB_API_KEY"] == "wandb_secret"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    cmd = distributed.launch_command(tmp_path / "run", tmp_path / "cfg.yaml", 2)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert not any("secret" in part for part in cmd)


def test_launch_streams_lines_and_fails_with_their_tail(tmp_path, monkeypatch):
    script = "import sys\nfor i in range(5):\n    print('line', i, flush=True)\nsys.exit(3)"
    monkeypatch.setattr(distributed, "launch_command", lambda *a: [sys.executable, "-c", script])
    cfg, seen = load_config("cpu", {"train.gradient_accumulation_steps": 2}), []
    with pytest.raises(distributed.DistributedError) as e:
        distributed.launch_training(cfg, Run.open(tmp_path / "run"), nproc=2, echo=seen.append, tail_lines=2)
    assert seen[0] == f"launching: python -c {shlex.quote(script)}"
    assert seen[1:] == [f"line {i}" for i in range(5)], "every line, as it came"
    assert "exited with 3" in str(e.value) and str(e.value).endswith("line 3\nline 4")
    with pytest.raises(ConfigError, match="does not divide among 2"):
        distributed.launch_training(load_config("cpu"), Run.open(tmp_path / "run"), nproc=2, echo=seen.append)


def test_notebook_trains_here_for_one_process_and_launches_for_more(tmp_path, monkeypatch):
    from r1helpers.workflow import train_stage

    calls = []
    monkeypatch.setattr(train_stage, "ensure_trained", lambda cfg, run, prepared: calls.append("here") or "here")
    monkeypatch.setattr(train_stage, "load_result", lambda run: "from the run folder")
    monkeypatch.setattr(distributed, "launch_training", lambda cfg, run, nproc: calls.append(f"launch {nproc}"))
    run = Run.open(tmp_path / "run")
    assert distributed.ensure_trained_anywhere(load_config("cpu"), run, None) == "here"
    two = load_config("cpu", {"train.processes": 2, "train.gradient_accumulation_steps": 2})
    assert distributed.ensure_trained_anywhere(two, run, None) == "from the run folder"
    assert calls == ["here", "launch 2"]


def test_rank_zero_alone_is_main(monkeypatch):
    assert ddp.is_main_process({}) and ddp.is_main_process({"RANK": "0", "WORLD_SIZE": "2"})
    assert not ddp.is_main_process({"RANK": "1", "WORLD_SIZE": "2"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    from r1helpers.workflow.tracking import wandb_setup

    assert wandb_setup(load_config("cpu", {"train.wandb": "offline"}), None)[0] == []


def test_cpu_ddp_uses_gloo(monkeypatch):
    assert ddp.trainer_kwargs() == {}, "one process: the Trainer's defaults"
    monkeypatch.setenv("WORLD_SIZE", "2")
    # Without use_cpu, accelerate finds no device backend and each process would train alone.
    assert ddp.trainer_kwargs() == {"use_cpu": True, "ddp_backend": "gloo", "ddp_find_unused_parameters": False}


# ---------------------------------------------------------------- two processes over gloo, for real

def _launch(tmp: Path, name: str, nproc: int, start_from: Path | None = None, **sets) -> tuple[Path, Path, str, float]:
    """Run the documented command with the recording sitecustomize; `start_from`: a run folder to copy first."""
    run_dir, dump, shim = tmp / name / "run", tmp / name / "dump", tmp / name / "shim"
    dump.mkdir(parents=True)
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    if start_from is not None:
        shutil.copytree(start_from, run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "R1HELPERS_TEST_DUMP": str(dump), "R1HELPERS_TEST_RUN": str(run_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "r1helpers.distributed", "--run-dir", str(run_dir), "--profile", "cpu",
           "--nproc", str(nproc), *[a for k, v in {**OVERRIDES, **sets}.items() for a in ("--set", f"{k}={v}")]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir, dump, proc.stdout + proc.stderr, seconds


def _interrupted_after(run_dir: Path, step: int, into: Path) -> Path:
    """The run folder as a session killed after checkpoint `step` leaves it: no later checkpoint, no adapter."""
    shutil.copytree(run_dir, into)
    train = into / "train"
    for later in train.glob("checkpoints/checkpoint-*"):
        if int(later.name.rsplit("-", 1)[-1]) > step:
            shutil.rmtree(later)
    shutil.rmtree(train / "adapter")
    for name in ("manifest.json", "metrics.json", "log_history.json"):
        (train / name).unlink()
    return into


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    # Both with the recipe's effective batch of 2 x 4 = 8: two processes are told accumulation 4 and
    # each accumulates 2; one process accumulates all 4. The two-process run checkpoints every 2
    # steps; a copy cut back to its first checkpoint then resumes, again on two processes.
    two = _launch(tmp, "two", 2, **{"train.save_steps": 2})
    cut = _interrupted_after(two[0], 2, tmp / "cut")
    return {"two": two, "one": _launch(tmp, "one", 1), "resumed": _launch(tmp, "resumed", 2, start_from=cut)}


def _lora(dump: Path, who: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(dump / f"lora-{who}.safetensors"))


def _info(dump: Path, who: str) -> dict:
    return json.loads((dump / f"info-{who}.json").read_text())


def _max_rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)).item() for k in a)


@pytest.mark.slow
def test_two_processes_train_over_gloo_with_the_split_batch(runs):
    _, dump, out, seconds = runs["two"]
    print(f"2 processes: {seconds:.1f} s; 1 process: {runs['one'][3]:.1f} s")
    for who in ("rank0", "rank1"):
        info = _info(dump, who)
        assert info["world_size"] == 2 and info["backend"] == "gloo" and "DISTRIBUTED" in info["parallel_mode"]
        assert (info["micro_batch"], info["accumulation"]) == (2, 2), info
    one = _info(runs["one"][1], "launcher")
    assert one["world_size"] == 1 and (one["micro_batch"], one["accumulation"]) == (2, 4)
    assert "micro-batch 2 x accumulation 2 x 2 processes" in out and "transformers + peft" in out
    assert out.count("batches: micro-batch") == 1, "rank 0 alone prints"


@pytest.mark.slow
def test_ranks_stay_in_sync(runs):
    dump = runs["two"][1]
    diff = _max_rel_diff(_lora(dump, "rank1"), _lora(dump, "rank0"))
    print(f"rank 1 vs rank 0: max relative LoRA weight difference {diff:.3g}")
    assert diff == 0.0, "DDP applies the same averaged gradient on every rank"
    assert _info(dump, "rank0")["losses"] == _info(dump, "rank1")["losses"]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_effective_batch(runs):
    two_run, two_dump = runs["two"][:2]
    one_run, one_dump = runs["one"][:2]
    ddp, single = _lora(two_dump, "rank0"), _lora(one_dump, "launcher")
    weight_diff = _max_rel_diff(ddp, single)
    losses_two, losses_one = _info(two_dump, "rank0")["losses"], _info(one_dump, "launcher")["losses"]
    loss_diff = max(abs(a - b) for a, b in zip(losses_two, losses_one, strict=True))
    print(f"2 vs 1 process: max relative LoRA weight difference {weight_diff:.3g}, max loss difference "
          f"{loss_diff:.3g}; losses {losses_two} vs {losses_one}")
    assert len(losses_one) == 4 and weight_diff <= WEIGHT_RTOL and loss_diff <= LOSS_ATOL
    # What rank 0 saved is what it trained, and reads back as the same result.
    from safetensors.torch import load_file

    saved = load_file(str(two_run / "train" / "adapter" / "adapter_model.safetensors"))
    assert _max_rel_diff({k: saved[k] for k in ddp}, ddp) == 0.0
    from r1helpers.workflow.train_stage import load_result

    result = load_result(Run.open(two_run))
    assert result.metrics["processes"] == 2 and result.metrics["backend"] == "transformers"
    assert [loss for _, loss in result.losses()] == losses_two


@pytest.mark.slow
def test_only_rank_zero_writes_the_run_folder(runs):
    run_dir, dump, _, _ = runs["two"]
    writes: dict[str, set[str]] = {}
    for path in dump.glob("writes-*.json"):
        who = path.name.split("-")[1]
        writes.setdefault(who, set()).update(json.loads(path.read_text()))
    # The Trainer's own checkpoints are the one exception: each rank saves its RNG state into them
    # (rng_state_1.pth, written by torch outside Python's audit events; rank 1 creates the folder).
    trainer_own = re.compile(r"train/checkpoints/checkpoint-\d+(/rng_state_1\.pth)?")
    rank1 = {w for w in writes.get("rank1", set()) if not trainer_own.fullmatch(w)}
    assert rank1 == set(), f"rank 1 wrote {sorted(rank1)[:10]}"
    assert (run_dir / "train" / "checkpoints" / "checkpoint-2" / "rng_state_1.pth").is_file()
    rank0 = writes["rank0"]
    for artefact in ("train/adapter", "train/log_history.json", "train/metrics.json", "train/manifest.json",
                     "train/checkpoints/fingerprint.txt"):
        assert artefact in rank0, (artefact, sorted(rank0))  # the rename that publishes it
    assert not any(w.startswith("train") for w in writes.get("launcher", set())), "the launcher leaves train/ to rank 0"
    for artefact in ("adapter/adapter_model.safetensors", "adapter/tokenizer.json", "log_history.json",
                     "metrics.json", "manifest.json"):
        assert (run_dir / "train" / artefact).is_file(), artefact


@pytest.mark.slow
def test_two_processes_resume_from_a_checkpoint(runs):
    run_dir, dump, out, _ = runs["resumed"]
    assert "resuming from checkpoint-2" in out
    assert json.loads((run_dir / "train" / "metrics.json").read_text())["resumed_from"] == "checkpoint-2"
    straight = runs["two"][1]
    for who in ("rank0", "rank1"):
        diff = _max_rel_diff(_lora(dump, who), _lora(straight, who))
        loss_diff = max(abs(a - b) for a, b in zip(_info(dump, who)["losses"], _info(straight, who)["losses"],
                                                    strict=True))
        print(f"resumed vs uninterrupted, {who}: max relative LoRA weight difference {diff:.3g}, "
              f"max loss difference {loss_diff:.3g}")
        assert diff <= WEIGHT_RTOL and loss_diff <= LOSS_ATOL
