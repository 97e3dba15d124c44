"""Run the numbered notebooks headless with papermill, sharing one run folder.

    python -m r1helpers.pipeline                       # all six, profile auto
    python -m r1helpers.pipeline --profile cpu --set train.max_steps=8 --stages 02,03

Executed notebooks land in `<run_dir>/notebooks/`; a notebook that fails is kept
there as `*.failed.ipynb` next to the last good one, which it never replaces.
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




def run_notebooks(
    run_dir: str | os.PathLike,
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    stages: list[str] | None = None,
    kernel_name: str | None = None,
    log_output: bool = True,
) -> dict[str, float]:
    """Execute the notebooks in order; returns seconds per stage."""
    import papermill as pm

    from r1helpers.core.runs import Run

    overrides = dict(overrides or {})
    # Fail before any kernel starts, under the profile the kernels will pick (auto: by GPU and Hub),
    # since some checks depend on it (train.processes must divide the profile's accumulation).
    load_config(profile, overrides, config_file)
    # The kernels run in notebooks/: a relative --config must not be looked up there.
    config_file = str(Path(config_file).resolve()) if config_file else None
    run = Run.open(run_dir)
    run.notebooks_dir.mkdir(parents=True, exist_ok=True)
    params = {"run_dir": str(run.root), "profile": profile, "config_file": config_file, "overrides": overrides}
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
        print(f"== {stage}: {src.name}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(src), str(partial), parameters=params, cwd=str(notebooks_dir()), kernel_name=kernel_name,
                log_output=log_output, progress_bar=False,
            )
        except BaseException:
            if partial.exists():
                os.replace(partial, final.with_suffix(".failed.ipynb"))
            raise
        os.replace(partial, final)
        timings[stage] = round(time.perf_counter() - t0, 1)
        print(f"== {stage} done in {timings[stage]} s", flush=True)
    from r1helpers.core.runs import write_json_atomic

    write_json_atomic(run.root / "pipeline_timings.json", timings)
    return timings




def main(argv: list[str] | None = None) -> int:
    p = config_arguments(__doc__)
    p.add_argument("--stages", default=None, help="comma-separated, e.g. 00,02,03 (default: all)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    args = p.parse_args(argv)
    try:
        overrides = parse_sets(args.set)  # text; config._coerce reads it by each field's type
        stages = args.stages.split(",") if args.stages else None
        timings = run_notebooks(args.run_dir, args.profile, overrides, args.config, stages, args.kernel)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("stage timings (s):", timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
