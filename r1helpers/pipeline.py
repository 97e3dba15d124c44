"""Run the numbered notebooks headless with papermill, sharing one run folder.

    python -m r1helpers.pipeline                       # all six, profile auto
    python -m r1helpers.pipeline --profile cpu --set train.max_steps=8 --stages 02,03

Executed notebooks land in `<run_dir>/notebooks/`; a notebook that fails is kept
there as `*.failed.ipynb` next to the last good one, which it never replaces. Each
kernel's own messages (not its cells' output, which is in the notebook) go to
`*.kernel.log` beside it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from r1helpers.core.config import ConfigError, load_config
from r1helpers.workflow.cli import config_arguments, parse_sets

NOTEBOOKS = {
    "00": "00_setup.ipynb",
    "01": "01_baseline_inference.ipynb",
    "02": "02_data_preparation.ipynb",
    "03": "03_lora_training.ipynb",
    "04": "04_before_after_comparison.ipynb",
    "05": "05_export.ipynb",
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"




class StageFailed(RuntimeError):
    """A notebook stopped; the message is one paragraph: what, where, what to do."""


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


def kernel_manager_logging_to(log: Path):
    """A kernel manager whose kernel writes its own stderr (ipykernel's start-up warnings, a C library's
    message as it exits) to `log`, not over the pipeline's console: cells' output still goes to the notebook."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelLoggingToFile(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log, "ab") as fh:  # the kernel gets its own copy of the descriptor
                kw.setdefault("stderr", fh)
                await super().start_kernel(**kw)

    return KernelLoggingToFile


def run_notebooks(
    run_dir: str | os.PathLike,
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    stages: list[str] | None = None,
    kernel_name: str | None = None,
    log_output: bool = True,
    overwrite: bool = False,
) -> dict[str, float]:
    """Execute the notebooks in order; returns seconds per stage. A stage that fails raises StageFailed."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    from r1helpers.core.kaggle_paths import resolve_run_dir
    from r1helpers.core.runs import Run, write_json_atomic
    from r1helpers.workflow.session import check_same_run, recorded_run, resolve_profile

    overrides = dict(overrides or {})
    root = Path(resolve_run_dir(run_dir)).expanduser().resolve()
    recorded = recorded_run(root)
    # `auto` is resolved here, once: every notebook gets the same concrete profile.
    profile, why = resolve_profile(profile, recorded)
    cfg = load_config(profile, overrides, config_file)  # fail before any kernel starts
    check_same_run(cfg, recorded, root, overwrite)
    print(f"profile: {profile} ({why})", flush=True)
    # The kernels run in notebooks/: a relative --config must not be looked up there.
    config_file = str(Path(config_file).resolve()) if config_file else None
    run = Run.open(root)
    run.notebooks_dir.mkdir(parents=True, exist_ok=True)
    params = {"run_dir": str(run.root), "profile": profile, "config_file": config_file, "overrides": overrides,
              "overwrite": overwrite}
    os.environ["R1HELPERS_HEADLESS"] = "1"
    # Headless logs get plain lines: the trainer's printer, not bars redrawn into a file.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The kernels draw with the inline backend (no display needed), so plots are saved in the executed
    # notebooks; Agg would draw them nowhere.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    timings: dict[str, float] = {}
    for stage in stages or list(NOTEBOOKS):
        if stage not in NOTEBOOKS:
            raise ConfigError(f"--stages: unknown stage {stage!r}; choose from {list(NOTEBOOKS)}")
        src = notebooks_dir() / NOTEBOOKS[stage]
        final = run.notebooks_dir / NOTEBOOKS[stage]
        partial = final.with_suffix(".running.ipynb")
        kernel_log = final.with_suffix(".kernel.log")
        print(f"== {stage}: {src.name}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(src), str(partial), parameters=params, cwd=str(notebooks_dir()), kernel_name=kernel_name,
                log_output=log_output, progress_bar=False, kernel_manager_class=kernel_manager_logging_to(kernel_log),
            )
        # A cell's error; a kernel that died; papermill unable to save the notebook (a full disk, a read-only folder).
        except (pm.PapermillExecutionError, DeadKernelError, OSError) as e:
            cell_error = isinstance(e, pm.PapermillExecutionError)
            ename, evalue = (e.ename, e.evalue) if cell_error else (type(e).__name__, str(e))
            kept = _keep_failed(partial, final.with_suffix(".failed.ipynb"))
            raise StageFailed(failure_paragraph(stage, ename, evalue, kept, kernel_log)) from None
        os.replace(partial, final)
        timings[stage] = round(time.perf_counter() - t0, 1)
        print(f"== {stage} done in {timings[stage]} s", flush=True)
    write_json_atomic(run.root / "pipeline_timings.json", timings)
    return timings


def main(argv: list[str] | None = None) -> int:
    import logging

    p = config_arguments(__doc__)
    p.add_argument("--stages", default=None, help="comma-separated, e.g. 00,02,03 (default: all)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    p.add_argument("--overwrite", action="store_true",
                   help="let stages replace finished work made with other settings (moved aside, never deleted)")
    p.add_argument("--quiet", action="store_true", help="print stage lines only, not each notebook's output")
    args = p.parse_args(argv)
    # papermill streams each cell's output through its logger: without a handler it reaches no one.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        overrides = parse_sets(args.set)  # text; config._coerce reads it by each field's type
        stages = args.stages.split(",") if args.stages else None
        timings = run_notebooks(args.run_dir, args.profile, overrides, args.config, stages, args.kernel,
                                overwrite=args.overwrite)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {failure_paragraph('setup', type(e).__name__, str(e), None)}", file=sys.stderr)
        return 1
    print("stage timings (s):", timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
