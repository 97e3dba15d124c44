"""The first call of every notebook: resolve the config, open the run folder, record the machine.

    cfg, run = r1helpers.start(run_dir, profile, overrides, config_file)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from r1helpers.core.config import Config, ConfigError, auto_profile, load_config
from r1helpers.core.runs import Run, write_json_atomic


def parse_overrides(overrides: Any) -> Mapping[str, Any]:
    """Papermill's `-p overrides '{"max_steps": 30}'` arrives as text: read it as a YAML/JSON mapping."""
    if overrides is None or (isinstance(overrides, str) and not overrides.strip()):
        return {}
    if isinstance(overrides, str):
        import yaml

        try:
            overrides = yaml.safe_load(overrides)
        except yaml.YAMLError as e:
            raise ConfigError(f"overrides: not a YAML or JSON mapping ({e})") from None
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides: expected a mapping such as {{'train.max_steps': 30}}, got {overrides!r}")
    return overrides


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
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"run_dir: expected a folder path, got {run_dir!r}")
    cfg = load_config(chosen, parse_overrides(overrides), config_file)
    from r1helpers.core.kaggle_paths import resolve_run_dir

    run = Run.open(resolve_run_dir(run_dir))
    run.save_config(cfg)
    if secrets:
        from r1helpers.core.secrets import load_secrets

        report = load_secrets()
        if not quiet:
            for line in report.lines():
                print(line)
    from r1helpers.core.hardware import environment_report

    env = environment_report(cfg)
    from r1helpers.training.plan import resolve_padding_free

    resolve_padding_free(cfg.train.padding_free, env["backend"]["name"])  # refuses what the backend cannot train
    env["profile_reason"] = why
    write_json_atomic(run.root / "environment.json", env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not quiet:
        b = env["backend"]
        print(f"run folder: {run.root}")
        print(f"profile: {cfg.profile} ({why})")
        print(f"backend: {b['name']} ({b['reason']}); dtype {b['dtype']}; 4-bit {b['load_in_4bit']}")
        for note in env["notes"]:
            print(note)
    return cfg, run
