"""Run the numbered notebooks headless with papermill, sharing one run folder.

    python -m r1helpers.pipeline                       # all six, profile auto
    python -m r1helpers.pipeline --profile cpu --set train.max_steps=8 --stages 02,03

The console gets a progress bar and a result line per stage; the cells' lines and the kernel's messages go to
`<run_dir>/notebooks/NN_name.kernel.log` (`--verbose`: the console too). A failed notebook is kept as
`*.failed.ipynb` next to the last good one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

from r1helpers.core.config import ConfigError
from r1helpers.workflow.cli import config_arguments, parse_sets

NOTEBOOKS = {
    "00": "00_setup.ipynb",
    "01": "01_baseline_inference.ipynb",
    "02": "02_data_preparation.ipynb",
    "03": "03_lora_training.ipynb",
    "04": "04_before_after_comparison.ipynb",
    "05": "05_export.ipynb",
}


def notebooks_dir() -> Path:
    """The notebooks shipped inside the installed package (a wheel built by `make kaggle`), else the checkout's."""
    packaged = Path(__file__).resolve().parent / "notebooks"
    return packaged if (packaged / NOTEBOOKS["00"]).is_file() else Path(__file__).resolve().parents[1] / "notebooks"


class StageFailed(RuntimeError):
    """A notebook stopped; the message is one paragraph: what, where, what to do."""


class Interrupted(RuntimeError):
    """Ctrl-C: the message is one line saying how to resume."""


def _tracked(folder: Path) -> list[str]:
    """Files git tracks under `folder` (none when it is not in a git work tree, or git is missing)."""
    if not folder.is_dir():
        return []
    try:
        proc = subprocess.run(["git", "-C", str(folder), "ls-files", "-z"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [f for f in proc.stdout.decode(errors="replace").split("\0") if f] if proc.returncode == 0 else []


def unsafe_run_dir(root: Path, sources: Path | None = None) -> str | None:
    """Why `root` must not be a run folder (its notebooks/ is the one being run, or git tracks files in it); None: safe."""
    sources = (sources or notebooks_dir()).resolve()
    fix = (" Use a run folder of its own, such as --run-dir runs/default (git ignores runs/); nothing was "
           "written.")
    if (root / "notebooks").resolve() == sources:
        return (f"--run-dir {root}: the executed notebooks would be written over the notebooks being run "
                f"({sources}), since a run folder keeps them in its notebooks/.{fix}")
    tracked = _tracked(root)
    if tracked:
        shown = ", ".join(tracked[:3]) + (f" and {len(tracked) - 3} more" if len(tracked) > 3 else "")
        return (f"--run-dir {root}: this folder holds files git tracks ({shown}), which the run's outputs "
                f"(notebooks/, config.yaml, data/, train/, ...) could overwrite.{fix}")
    return None


# The project's own errors already say what to do: their message is the paragraph.
OWN_ERRORS = ("ConfigError", "DataError", "ModelError", "RunFolderConflict", "RunFolderBusy", "ExportSpaceError",
              "ExportCheckError", "DistributedError", "MergeError")


def failure_paragraph(stage: str, ename: str, evalue: str, notebook: Path | None,
                      kernel_log: Path | None = None) -> str:
    """One paragraph for a stage that stopped: the project's own message, or what the error means."""
    where = f" The executed notebook, with the full traceback, is {notebook}." if notebook else ""
    text = " ".join(str(evalue).split())
    if ename in OWN_ERRORS:
        return f"Stage {stage} stopped: {text}{where}"
    if ename == "DeadKernelError":  # killed (out of host memory) or crashed in native code
        return (f"Stage {stage} stopped: its kernel died ({text[:300]}). The system may have killed it for lack of "
                f"memory, or native code crashed; the kernel's own messages are in {kernel_log}. Lower the batch "
                f"or row count, then run the same command again: finished stages are reused.{where}")
    if ename in ("OSError", "PermissionError") and ("No space left" in text or "Errno 28" in text):
        return (f"Stage {stage} stopped: the disk is full ({text}). Free space on the disk that holds the run "
                f"folder (or point export.output_dir at a larger one) and run the same command again: finished "
                f"stages are reused and training resumes from its last checkpoint.{where}")
    if ename == "PermissionError" or "Read-only file system" in text or "Errno 30" in text:
        return (f"Stage {stage} stopped: a file could not be written ({text}). Use a run folder you can write to "
                f"(--run-dir), then run the same command again.{where}")
    if "CommError" in ename or "wandb" in ename.lower():
        return (f"Stage {stage} stopped: Weights & Biases failed ({text}). Set train.wandb=offline (or off) to "
                f"log to the run folder only, and sync later with `wandb sync`.{where}")
    if "OutOfMemory" in ename or "out of memory" in text.lower():
        return (f"Stage {stage} stopped: the GPU ran out of memory ({text}). Lower the batch or sequence "
                f"length as the message says, then run the same command again.{where}")
    return f"Stage {stage} stopped with {ename}: {text[:600]}.{where}"


def _keep_failed(partial: Path, failed: Path) -> Path | None:
    """Keep the executed notebook for its traceback, if it was written whole (a full disk cuts it short)."""
    if not partial.exists():
        return None
    try:
        import nbformat

        nbformat.read(str(partial), as_version=4)
    except Exception:
        partial.unlink(missing_ok=True)  # cut-off JSON would only mislead: the console has the error
        return None
    os.replace(partial, failed)
    return failed


_KERNELS: list[Any] = []  # the kernel managers this process started: Ctrl-C stops their kernels


def kernel_manager_logging_to(log: Path):
    """A kernel manager whose kernel writes its own stderr to `log`, not over the pipeline's console."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelLoggingToFile(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log, "ab") as fh:  # the kernel gets its own copy of the descriptor
                kw.setdefault("stderr", fh)
                await super().start_kernel(**kw)
            _KERNELS.append(self)

    return KernelLoggingToFile


def _stop_kernels() -> None:
    """Kill the kernels this process started, and what they started (each leads its own session: Ctrl-C missed it)."""
    logging.getLogger("asyncio").disabled = True  # else it prints the pending cell task's DeadKernelError
    while _KERNELS:
        km = _KERNELS.pop()
        process = getattr(getattr(km, "provisioner", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        try:
            process.wait(timeout=10)
        except Exception:
            pass


def interrupted_line(stage: str, run_root: Path) -> str:
    from r1helpers.training.sft import latest_checkpoint

    ckpt = latest_checkpoint(run_root / "train" / "checkpoints") if stage == "03" else None
    if ckpt:
        return f"interrupted; run the same command again to resume from {ckpt.name}"
    return f"interrupted in stage {stage}; run the same command again: finished stages are reused"


@contextmanager
def stage_log(log: Path, verbose: bool):
    """papermill's per-cell lines go to the stage's log; with `verbose`, to the console as well."""
    logger = logging.getLogger("papermill")
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    old = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = verbose
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old[0])
        logger.propagate = old[1]


def result_line(run_root: Path, stage: str, seconds: float) -> str:
    """The stage's result line: its time and the first values of results/NN.json."""
    import json

    line = f"  {stage} done in {seconds:.1f} s"
    try:
        data = json.loads((run_root / "results" / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return line
    rows = data.get("rows", data) if isinstance(data, dict) else {}
    items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={str(v)[:40]}"
             for k, v in (rows if isinstance(rows, dict) else data).items() if isinstance(v, (int, float, str))][:4]
    return line + (": " + ", ".join(items) if items else "")


def run_notebooks(
    run_dir: str | os.PathLike,
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    stages: list[str] | None = None,
    kernel_name: str | None = None,
    log_output: bool = True,
    overwrite: bool = False,
    verbose: bool = False,
    dry_run: bool = False,
) -> dict[str, float]:
    """Execute the notebooks in order; returns seconds per stage. Raises StageFailed, or Interrupted on Ctrl-C."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    from r1helpers.core.kaggle_paths import resolve_run_dir
    from r1helpers.core.runs import Run, write_json_atomic
    from r1helpers.workflow.session import resolve_run

    overrides = dict(overrides or {})
    for stage in stages or []:
        if stage not in NOTEBOOKS:
            raise ConfigError(f"--stages: unknown stage {stage!r}; choose from {list(NOTEBOOKS)}")
    root = Path(resolve_run_dir(run_dir)).expanduser().resolve()
    unsafe = unsafe_run_dir(root)
    if unsafe:
        raise ConfigError(unsafe)
    cfg, _, why, continued = resolve_run(root, profile, overrides, config_file, overwrite)  # before any kernel
    if continued:
        print(f"continuing the attached run {continued} in {root}", flush=True)
    profile = cfg.profile
    print(f"profile: {profile} ({why})", flush=True)
    # The kernels run in notebooks/: a relative --config must not be looked up there.
    config_file = str(Path(config_file).resolve()) if config_file else None
    run = Run.open(root)
    run.notebooks_dir.mkdir(parents=True, exist_ok=True)
    params = {"run_dir": str(run.root), "profile": profile, "config_file": config_file, "overrides": overrides,
              "overwrite": overwrite}
    os.environ["R1HELPERS_HEADLESS"] = "1"
    if dry_run:  # notebook 05's keep_model reads it: no Kaggle Model upload
        os.environ["R1HELPERS_KAGGLE_DRY_RUN"] = "1"
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The inline backend needs no display and saves the plots in the executed notebooks.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    timings: dict[str, float] = {}
    for stage in stages or list(NOTEBOOKS):
        src = notebooks_dir() / NOTEBOOKS[stage]
        final = run.notebooks_dir / NOTEBOOKS[stage]
        partial = final.with_suffix(".running.ipynb")
        kernel_log = final.with_suffix(".kernel.log")
        t0 = time.perf_counter()
        bar = {"desc": f"{stage} {Path(NOTEBOOKS[stage]).stem[3:]}", "leave": True, "file": sys.stdout,
               "bar_format": "{desc:<28} {bar:20} {n_fmt}/{total_fmt} cells [{elapsed}]"}
        try:
            with stage_log(kernel_log, verbose):
                pm.execute_notebook(
                    str(src), str(partial), parameters=params, cwd=str(notebooks_dir()), kernel_name=kernel_name,
                    log_output=log_output, progress_bar=bar,
                    kernel_manager_class=kernel_manager_logging_to(kernel_log),
                )
        except (pm.PapermillExecutionError, DeadKernelError, OSError, KeyboardInterrupt) as e:
            cell_error = isinstance(e, pm.PapermillExecutionError)
            ename, evalue = (e.ename, e.evalue) if cell_error else (type(e).__name__, str(e))
            if ename == "KeyboardInterrupt":  # here, or in the kernel
                _stop_kernels()
                partial.unlink(missing_ok=True)
                raise Interrupted(interrupted_line(stage, run.root)) from None
            kept = _keep_failed(partial, final.with_suffix(".failed.ipynb"))
            raise StageFailed(failure_paragraph(stage, ename, evalue, kept, kernel_log)) from None
        finally:
            _KERNELS.clear()
        os.replace(partial, final)
        timings[stage] = round(time.perf_counter() - t0, 1)
        print(result_line(run.root, stage, timings[stage]), flush=True)
    write_json_atomic(run.root / "pipeline_timings.json", timings)
    return timings


def main(argv: list[str] | None = None) -> int:
    p = config_arguments(__doc__)
    p.add_argument("--stages", default=None, help="comma-separated, e.g. 00,02,03 (default: all)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    p.add_argument("--overwrite", action="store_true",
                   help="let stages replace finished work made with other settings (moved aside, never deleted)")
    p.add_argument("--verbose", action="store_true", help="print each cell's lines too (always in the stage's log)")
    p.add_argument("--quiet", action="store_true", help="the default: a progress bar and a result line per stage")
    p.add_argument("--dry-run", action="store_true",
                   help="on Kaggle, keep the adapter in /kaggle/working only: no Kaggle Model upload")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        overrides = parse_sets(args.set)  # text; config_values._coerce reads it by each field's type
        stages = args.stages.split(",") if args.stages else None
        timings = run_notebooks(args.run_dir, args.profile, overrides, args.config, stages, args.kernel,
                                overwrite=args.overwrite, verbose=args.verbose, dry_run=args.dry_run)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as e:
        _stop_kernels()
        print(str(e) if isinstance(e, Interrupted) else "interrupted; run the same command again: finished stages "
              "are reused", file=sys.stderr, flush=True)
        return 130
    except OSError as e:
        print(f"error: {failure_paragraph('setup', type(e).__name__, str(e), None)}", file=sys.stderr)
        return 1
    print("stage timings (s):", timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
