"""The first call of every notebook: resolve the config, open the run folder, record the machine.

    cfg, run = r1helpers.start(run_dir, profile, overrides, config_file)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .config import Config, auto_profile, load_config
from .runs import Run, write_json_atomic


def start(
    run_dir: str = "runs/default",
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    secrets: bool = True,
    quiet: bool = False,
) -> tuple[Config, Run]:
    """Check every parameter before anything heavy loads, then record config and environment."""
    chosen, why = auto_profile() if profile == "auto" else (profile, f"profile={profile} requested")
    cfg = load_config(chosen, overrides, config_file)
    run = Run.open(run_dir)
    run.save_config(cfg)
    if secrets:
        from .secrets import load_secrets

        report = load_secrets()
        if not quiet:
            for line in report.lines():
                print(line)
    from .env import environment_report

    env = environment_report(cfg)
    env["profile_reason"] = why
    write_json_atomic(run.root / "environment.json", env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not quiet:
        b = env["backend"]
        print(f"run folder: {run.root}")
        print(f"profile: {cfg.profile} ({why})")
        print(f"backend: {b['name']} ({b['reason']}); dtype {b['dtype']}; 4-bit {b['load_in_4bit']}")
    return cfg, run
