"""Train on several GPUs of one machine (Kaggle's T4 x2): PyTorch DDP, one process per GPU, started by torchrun.

    python -m r1helpers.distributed --run-dir runs/default --nproc 2

Each worker runs what stage 03 runs with transformers + peft; each of N processes accumulates
gradient_accumulation_steps / N micro-batches, so the effective batch stays the recipe's. Rank 0 logs and
writes the run folder. Without CUDA the processes talk over gloo: slow, but the same code (the tests).
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from r1helpers.core.config import Config, ConfigError, validate
from r1helpers.core.ddp import (DDP_BACKEND_NOTE, GPUS_BEFORE_PIN_ENV, init_process_group, main_first,
                               per_process, print0, world_size)


class DistributedError(RuntimeError):
    """The training processes failed; the message holds the end of their output."""


def visible_gpus(environ: Mapping[str, str] = os.environ, smi: Callable[[], list] | None = None) -> list[str]:
    """The GPU ids the training processes may use, including those a notebook's first cell hid."""
    if environ.get(GPUS_BEFORE_PIN_ENV):
        return [d.strip() for d in environ[GPUS_BEFORE_PIN_ENV].split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    if smi is None:
        from r1helpers.core.hardware import smi_gpus as smi
    return [str(i) for i in range(len(smi()))]


def resolve_processes(requested: int | None, gpus: list[str]) -> int:
    """0 or None: one process per visible GPU (1 without a GPU); N: N, at most one per GPU."""
    if requested is None or requested == 0:
        return max(1, len(gpus))
    if requested < 0:
        raise ConfigError(f"train.processes: must be >= 0, got {requested}")
    if gpus and requested > len(gpus):
        raise ConfigError(f"train.processes={requested}: only {len(gpus)} GPUs are visible ({','.join(gpus)})")
    return requested


def launch_command(run_dir: Path, config_path: Path, nproc: int) -> list[str]:
    """torchrun through this interpreter (`python -m torch.distributed.run`), so a venv's torch runs."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "r1helpers.distributed", "--worker", "--run-dir", str(run_dir), "--resolved-config", str(config_path)]


def child_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """This environment (secrets travel here, never on the command line), the GPUs pin_first_gpu hid shown again
    and r1helpers importable from wherever it was imported."""
    env = dict(environ)
    if env.get(GPUS_BEFORE_PIN_ENV):
        env["CUDA_VISIBLE_DEVICES"] = env[GPUS_BEFORE_PIN_ENV]
    package_root = Path(__file__).resolve().parents[1]
    if package_root.name not in ("site-packages", "dist-packages"):  # a checkout the notebook put on sys.path
        env["PYTHONPATH"] = os.pathsep.join([str(package_root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["R1HELPERS_HEADLESS"] = "1"  # plain log lines: a stream of tqdm redraws reads badly line by line
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def launch_training(cfg: Config, run, nproc: int | None = None, echo: Callable[[str], None] | None = None,
                    tail_lines: int = 80) -> None:
    """Train under torchrun with `nproc` processes (default: one per visible GPU), printing their lines as they
    come; raise DistributedError with the last ones on failure. `train_stage.load_result(run)` reads the result."""
    from r1helpers.core import config as config_mod
    from r1helpers.training.plan import resolve_padding_free

    nproc = resolve_processes(nproc, visible_gpus())

    per_process(cfg, nproc)  # bad settings fail here, before any process starts
    resolve_padding_free(cfg.train.padding_free, "transformers")
    echo = echo or (lambda line: print(line, flush=True))
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with tempfile.TemporaryDirectory(prefix="r1helpers-ddp-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_mod.dump(cfg))
        cmd = launch_command(run.root, config_path, nproc)
        echo("launching: " + shlex.join(["python", *cmd[1:]]))
        proc = subprocess.Popen(cmd, env=child_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                echo(line)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt in a notebook): stop every rank
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            proc.stdout.close()
    if code != 0:
        raise DistributedError(f"distributed training failed (torchrun exited with {code}); its last lines:\n"
                               + "\n".join(tail))


def training_processes(cfg: Config) -> int:
    """train.processes resolved: 1, N (at most one per visible GPU), or 0: every visible GPU."""
    processes = cfg.train.processes
    return processes if processes == 1 else resolve_processes(processes, visible_gpus())


def ensure_trained_anywhere(cfg: Config, run, prepared, processes: int | None = None):
    """What notebook 03 calls: `train_stage.ensure_trained` here for one process, else the same under torchrun.
    `cfg` is checked again first, so values assigned in a notebook cell are what trains."""
    from r1helpers.workflow import train_stage

    cfg = validate(cfg)
    processes = training_processes(cfg) if processes is None else processes
    if processes == 1 or world_size() > 1:
        return train_stage.ensure_trained(cfg, run, prepared)
    if run.is_current(cfg, "train"):
        return train_stage.load_result(run)
    print(f"DDP over {processes} processes: {DDP_BACKEND_NOTE}")
    launch_training(cfg, run, nproc=processes)
    return train_stage.load_result(run)


def _worker(run_dir: str, config_path: str) -> None:
    """One rank: join the group, reuse the prepared splits, train; rank 0 writes the results."""
    import yaml

    from r1helpers.core import config as config_mod
    from r1helpers.core.runs import Run
    from r1helpers.workflow import data_stage, train_stage

    cfg = config_mod.from_dict(yaml.safe_load(Path(config_path).read_text()))
    run = Run(Path(run_dir).resolve())
    init_process_group()
    try:
        print0(f"DDP: {world_size()} processes; {DDP_BACKEND_NOTE}")
        with main_first():
            prepared = data_stage.prepare(cfg, run)
        train_stage.ensure_trained(cfg, run, prepared)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from r1helpers.workflow.cli import config_arguments

    p = config_arguments(__doc__)
    p.add_argument("--nproc", type=int, default=None,
                   help="training processes, one per GPU (default: every visible GPU; 1 without one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resolved-config", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.run_dir, args.resolved_config)
        return 0
    import r1helpers
    from r1helpers.workflow import data_stage
    from r1helpers.workflow.cli import parse_sets

    try:
        cfg, run = r1helpers.start(args.run_dir, args.profile, parse_sets(args.set), args.config)
        processes = resolve_processes(args.nproc, visible_gpus())
        per_process(cfg, processes)  # before the data is prepared
        result = ensure_trained_anywhere(cfg, run, data_stage.prepare(cfg, run), processes)
    except (ConfigError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(f"adapter: {result.adapter_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
