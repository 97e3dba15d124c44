"""The first call of every notebook: resolve the config, open the run folder, record the machine.

    cfg, run = r1helpers.start(run_dir, profile, overrides, config_file)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from r1helpers.core import config as config_mod
from r1helpers.core import recipes
from r1helpers.core.config import Config, ConfigError, load_config
from r1helpers.core.runs import Run, read_json, write_json_atomic


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


RUN_RECORD = "run.json"  # the profile and model a run folder was made for, resolved once


def recorded_run(root: Path) -> dict[str, Any] | None:
    """The profile and model the run folder was made for: its run.json, else what the finished stages' manifests
    say (None: neither)."""
    path = Path(root) / RUN_RECORD
    if path.is_file():
        try:
            record = read_json(path)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:120]}), so the profile and model this run "
                f"folder was made for are unknown. Delete {path}: the next run records them again from the "
                "finished stages' manifests."
            ) from None
        if isinstance(record, dict) and {"profile", "model"} <= set(record):
            return record
        raise ConfigError(f"{path} lacks the profile and model of the run folder; delete it: the next run records "
                          "them again from the finished stages' manifests.")
    return derived_run(Path(root))


def derived_run(root: Path) -> dict[str, Any] | None:
    """The run record read from the finished stages' manifests (run.json missing); None when none finished."""
    import json

    from r1helpers.core.runs import STAGE_SECTIONS

    models = {}
    for stage in STAGE_SECTIONS:
        manifest = root / stage / "manifest.json"
        try:
            settings = json.loads(manifest.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            continue
        model = settings.get("model.name") or (settings.get("model") or {}).get("name")
        if model:
            models[stage] = model
    if not models:
        return None
    model = next(iter(models.values()))
    if len(set(models.values())) > 1:
        raise ConfigError(f"{root}: {RUN_RECORD} is missing and the finished stages were made with different models "
                          f"({models}); use another run folder (--run-dir), or pass --overwrite.")
    named = [p for p in recipes.profiles() if config_mod.load_config(p).model.name == model]
    return {"profile": named[0] if len(named) == 1 else None, "model": model,
            "why": f"{RUN_RECORD} was missing: read from the finished stages' manifests ({', '.join(models)})"}


def resolve_profile(profile: str, recorded: dict[str, Any] | None) -> tuple[str, str]:
    """`auto` is resolved once per run folder (by the GPU and the Hub), then read as recorded: one unanswered Hub
    request must not switch a later notebook to the CPU profile."""
    if profile != "auto":
        return profile, f"profile={profile} requested"
    if recorded and recorded.get("profile"):
        return recorded["profile"], f"recorded in {RUN_RECORD} when this run folder was made ({recorded.get('why')})"
    return recipes.auto_profile()  # looked up at call time: tests and notebooks may replace it


def check_same_run(cfg: Config, recorded: dict[str, Any] | None, root: Path, overwrite: bool) -> None:
    """A run folder belongs to one profile and model; another is refused with the reason and two ways on."""
    if not recorded or overwrite:
        return
    if recorded["profile"] not in (None, cfg.profile) or recorded["model"] != cfg.model.name:
        raise ConfigError(
            f"run_dir: {root} was made for profile {recorded['profile']!r} with model {recorded['model']!r}, "
            f"not profile {cfg.profile!r} with model {cfg.model.name!r}. Use another run folder for this run "
            f"(--run-dir, or run_dir in the parameters), or pass --overwrite (overwrite=True) to let it replace "
            f"the finished stages, which are moved aside to {root / 'replaced'}/ first, never deleted."
        )


def continue_attached_run(root: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """On Kaggle, a run folder not yet begun continues the attached one (the previous kernel's output under
    /kaggle/input), copied into `root`, where every stage reuses what is current. Returns the folder continued."""
    import shutil

    from r1helpers.core.kaggle_paths import attached_runs, on_kaggle

    root = Path(root)
    if not on_kaggle(environ) or (root / RUN_RECORD).is_file():
        return None
    found = attached_runs(environ)
    if not found:
        return None
    src = found[0]
    skip = shutil.ignore_patterns("*.lock", "*.running.ipynb", "__pycache__")
    shutil.copytree(src, root, ignore=skip, copy_function=shutil.copyfile, dirs_exist_ok=True)
    for folder in (root, *(p for p in root.rglob("*") if p.is_dir())):  # copystat kept the mount's read-only bits
        folder.chmod(folder.stat().st_mode | 0o700)
    record = read_json(root / RUN_RECORD)
    write_json_atomic(root / RUN_RECORD, {**record, "continued_from": str(src)})
    return src


def load_run_config(profile: str, overrides: Mapping[str, Any], config_file: str | None, root: Path) -> Config:
    """The config for a run folder: a continued run starts from its recorded config.yaml (an earlier kernel's
    overrides hold), then config_file, then overrides."""
    recorded = recorded_run(root)
    cfg_path = Path(root) / "config.yaml"
    if not (recorded and recorded.get("continued_from") and cfg_path.is_file()):
        return load_config(profile, overrides, config_file)
    import yaml

    base = yaml.safe_load(cfg_path.read_text()) or {}
    base.pop("profile", None)
    cfg = config_mod.apply_overrides(load_config(profile, {}, None), base)
    if config_file:
        cfg = config_mod.apply_overrides(cfg, config_mod._read_yaml(Path(config_file), "config_file"))
    return config_mod.apply_overrides(cfg, overrides)


def resolve_run(root: Path, profile: str, overrides: Mapping[str, Any], config_file: str | None, overwrite: bool):
    """(cfg, recorded run, why this profile, attached run continued): another profile or model is refused."""
    continued = continue_attached_run(root)
    recorded = recorded_run(root)
    chosen, why = resolve_profile(profile, recorded)
    cfg = load_run_config(chosen, overrides, config_file, root)
    check_same_run(cfg, recorded, root, overwrite)
    return cfg, recorded, why, continued


# Which notebooks load a model through Unsloth (~45 s to import); 01 and 04 only on its generation path (a T4).
UNSLOTH_STAGES = {"00": True, "02": False, "03": True, "05": False}
GENERATION_STAGES = {"01": "baseline", "04": "finetuned"}


def imports_unsloth(cfg: Config, run: Run, stage: str | None) -> bool:
    """Whether notebook `stage` loads a model through Unsloth (None, a script of your own: yes), decided before
    transformers is imported, since Unsloth patches it when imported first."""
    if stage is None:
        return True
    if stage in GENERATION_STAGES:
        from r1helpers.inference.choose import generation_path

        return generation_path(cfg, run, GENERATION_STAGES[stage]).backend == "unsloth"
    if stage not in UNSLOTH_STAGES:
        raise ConfigError(f"stage: expected one of {sorted({*UNSLOTH_STAGES, *GENERATION_STAGES})} or None, "
                          f"got {stage!r}")
    return UNSLOTH_STAGES[stage]


def start(
    run_dir: str = "runs/default",
    profile: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    secrets: bool = True,
    quiet: bool = False,
    overwrite: bool = False,
    stage: str | None = None,
) -> tuple[Config, Run]:
    """Check every parameter before anything heavy loads, then record config and environment. `stage` ("00" ...
    "05"): the calling notebook, which imports Unsloth only where it loads a model through it."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"run_dir: expected a folder path, got {run_dir!r}")
    from r1helpers.core.kaggle_paths import resolve_run_dir

    root = Path(resolve_run_dir(run_dir)).expanduser().resolve()
    cfg, recorded, why, continued = resolve_run(root, profile, parse_overrides(overrides), config_file, overwrite)
    run = Run.open(root, overwrite=overwrite)
    if recorded is None or overwrite or not (run.root / RUN_RECORD).is_file():
        write_json_atomic(run.root / RUN_RECORD, {"profile": cfg.profile, "model": cfg.model.name, "why": why,
                                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if overwrite or not run.config_path.is_file():
        run.save_config(cfg)
    if secrets:
        from r1helpers.core.secrets import load_secrets

        report = load_secrets()
        if not quiet:
            for line in report.lines():
                print(line)
    from r1helpers.core.hardware import environment_report
    from r1helpers.training.plan import resolve_padding_free

    env = environment_report(cfg, try_import=imports_unsloth(cfg, run, stage))
    resolve_padding_free(cfg.train.padding_free, env["backend"]["name"])  # refuses what the backend cannot train
    env["profile_reason"] = why
    env["secrets_found"] = dict(report.found) if secrets else {}  # where each was found, never its value
    write_json_atomic(run.root / "environment.json", env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not quiet:
        b = env["backend"]
        print(f"run folder: {run.root}" + (f" (continuing the attached run {continued})" if continued else ""))
        print(f"profile: {cfg.profile} ({why})")
        print(f"backend: {b['name']} ({b['reason']}); dtype {b['dtype']}; 4-bit {b['load_in_4bit']}")
        for note in env["notes"]:
            print(note)
    return cfg, run
