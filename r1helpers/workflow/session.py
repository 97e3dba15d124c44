"""The first call of every notebook: resolve the config, open the run folder, record the machine.

    cfg, run = r1helpers.start(run_dir, profile, overrides, config_file)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from r1helpers.core import config as config_mod
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
    path = Path(root) / RUN_RECORD
    return read_json(path) if path.is_file() else None


def resolve_profile(profile: str, recorded: dict[str, Any] | None) -> tuple[str, str]:
    """`auto` is resolved once per run folder: by the GPU and the Hub the first time, then as recorded.

    Probing again in every notebook would let one unanswered Hub request switch a later notebook
    to the CPU profile and rebuild the run folder with the tiny model.
    """
    if profile != "auto":
        return profile, f"profile={profile} requested"
    if recorded:
        return recorded["profile"], f"recorded in {RUN_RECORD} when this run folder was made ({recorded['why']})"
    return config_mod.auto_profile()  # looked up at call time: tests and notebooks may replace it


def check_same_run(cfg: Config, recorded: dict[str, Any] | None, root: Path, overwrite: bool) -> None:
    """A run folder belongs to one profile and model; another is refused with the reason and two ways on."""
    if not recorded or overwrite:
        return
    if recorded["profile"] != cfg.profile or recorded["model"] != cfg.model.name:
        raise ConfigError(
            f"run_dir: {root} was made for profile {recorded['profile']!r} with model {recorded['model']!r}, "
            f"not profile {cfg.profile!r} with model {cfg.model.name!r}. Use another run folder for this run "
            f"(--run-dir, or run_dir in the parameters), or pass --overwrite (overwrite=True) to let it replace "
            f"the finished stages, which are moved aside to {root / 'replaced'}/ first, never deleted."
        )


def continue_attached_run(root: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """On Kaggle, a run folder not yet begun here continues the run folder found in what is attached (the previous
    notebook's kernel output, mounted read-only under /kaggle/input): it is copied into `root` (in /kaggle/working),
    where every stage reuses what is current. Returns the folder continued, or None."""
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
    """The config for a run folder. A run continued from an attached one starts from that run's recorded
    config.yaml, so an override given in an earlier kernel holds here too; then config_file, then overrides."""
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


# Which notebooks load a model through Unsloth (importing it takes ~45 s on the H200, BENCHMARKS.md): setup checks
# that it imports, training trains through it, data preparation and export never use it, and the two generation
# notebooks only when their generation path is Unsloth's (a T4; `infer.path=auto` takes the static 16-bit path
# where the weights fit).
UNSLOTH_STAGES = {"00": True, "02": False, "03": True, "05": False}
GENERATION_STAGES = {"01": "baseline", "04": "finetuned"}


def imports_unsloth(cfg: Config, run: Run, stage: str | None) -> bool:
    """Whether notebook `stage` loads a model through Unsloth, decided before transformers is imported:
    Unsloth patches transformers when it is imported first, so `start` imports it (or not) now.
    `stage=None` (a script of your own): yes, as before."""
    if stage is None:
        return True
    if stage in GENERATION_STAGES:
        from r1helpers.inference.choose import generation_path

        # imports Unsloth itself when the path is Unsloth's; reads the model's shapes without transformers
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
    """Check every parameter before anything heavy loads, then record config and environment.

    `stage` ("00" ... "05", the calling notebook): import Unsloth only where that notebook loads a model through
    it (`imports_unsloth`); None imports it wherever the GPU supports it."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"run_dir: expected a folder path, got {run_dir!r}")
    from r1helpers.core.kaggle_paths import resolve_run_dir

    root = Path(resolve_run_dir(run_dir)).expanduser().resolve()
    continued = continue_attached_run(root)
    recorded = recorded_run(root)
    chosen, why = resolve_profile(profile, recorded)
    cfg = load_run_config(chosen, parse_overrides(overrides), config_file, root)
    check_same_run(cfg, recorded, root, overwrite)
    run = Run.open(root, overwrite=overwrite)
    if recorded is None or overwrite:
        write_json_atomic(run.root / RUN_RECORD, {"profile": cfg.profile, "model": cfg.model.name, "why": why,
                                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    run.save_config(cfg)
    if secrets:
        from r1helpers.core.secrets import load_secrets

        report = load_secrets()
        if not quiet:
            for line in report.lines():
                print(line)
    from r1helpers.core.hardware import environment_report

    env = environment_report(cfg, try_import=imports_unsloth(cfg, run, stage))
    from r1helpers.training.plan import resolve_padding_free

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
