"""A model that outlives the Kaggle session: stage 05's adapter and the largest GGUF that fits are copied into
`<run>/kept/` in /kaggle/working (kept with each saved version), and the adapter is kept as a private Kaggle Model
(kagglehub) when Kaggle credentials exist; R1HELPERS_KAGGLE_MODEL names its handle."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Mapping, MutableMapping

from r1helpers.core.kaggle_paths import WORKING_USABLE_GB, on_kaggle, paths

MODEL_ENV = "R1HELPERS_KAGGLE_MODEL"
KEPT = "kept"
KAGGLE_CREDENTIALS_HELP = ("add KAGGLE_USERNAME and KAGGLE_KEY (your kaggle.json's two values) under Add-ons > "
                           "Secrets, or set them in the environment (or KAGGLE_API_TOKEN, or ~/.kaggle/kaggle.json)")


def kaggle_credentials(environ: MutableMapping[str, str] = os.environ) -> tuple[str | None, str | None]:
    """(where Kaggle credentials were found, the username): the environment, Kaggle's secrets (copied into the
    environment, where kagglehub reads them), or kaggle.json; (None, None) without any."""
    if environ.get("KAGGLE_USERNAME") and (environ.get("KAGGLE_KEY") or environ.get("KAGGLE_API_TOKEN")):
        return "environment", environ["KAGGLE_USERNAME"]
    if on_kaggle(environ):
        try:
            from kaggle_secrets import UserSecretsClient  # only inside a Kaggle kernel

            found = {name: UserSecretsClient().get_secret(name) for name in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
            if all(found.values()):
                environ.update(found)
                return "Kaggle secrets", found["KAGGLE_USERNAME"]
        except Exception:  # no such secret, or not switched on for this notebook
            pass
    path = Path(environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    try:
        data = json.loads(path.read_text())
        if data.get("username") and data.get("key"):
            return str(path), data["username"]
    except (OSError, ValueError):
        pass
    return None, None


def model_handle(username: str, run_name: str, base_model: str, environ: Mapping[str, str] = os.environ) -> str:
    """R1HELPERS_KAGGLE_MODEL, else `<user>/<base model>-medical-lora/transformers/<run folder>`."""
    slug = lambda text: re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50]  # noqa: E731
    return environ.get(MODEL_ENV) or \
        f"{username}/{slug(base_model.split('/')[-1])}-medical-lora/transformers/{slug(run_name) or 'default'}"


def upload_kaggle_model(folder: str | os.PathLike, handle: str | None = None, *, base_model: str = "model",
                        run_name: str = "default", dry_run: bool = False, version_notes: str = "",
                        license_name: str | None = None,
                        environ: MutableMapping[str, str] = os.environ) -> dict[str, object]:
    """Keep `folder` (the exported adapter) as a private Kaggle Model with `kagglehub.model_upload`, when Kaggle
    credentials exist and not `dry_run`; else the message says which settings to add. A failed upload raises."""
    folder = Path(folder)
    source, user = kaggle_credentials(environ)
    handle = handle or (model_handle(user, run_name, base_model, environ) if user else None)
    if not folder.is_dir():
        return {"uploaded": False, "handle": handle, "message": f"Kaggle Model: nothing to upload ({folder} missing)"}
    if dry_run or source is None:
        why = "dry run asked" if dry_run else f"no Kaggle credentials: {KAGGLE_CREDENTIALS_HELP}"
        return {"uploaded": False, "handle": handle,
                "message": f"Kaggle Model upload skipped ({why}); the adapter stays in {folder}"}
    try:
        import kagglehub
    except ModuleNotFoundError:
        return {"uploaded": False, "handle": handle, "message": "Kaggle Model upload skipped: kagglehub is not "
                "installed (`pip install kagglehub`; Kaggle's image has it)"}
    if environ.get("R1HELPERS_KAGGLE_API_ENDPOINT"):  # tests: kagglehub's calls go to that server
        from kagglesdk import kaggle_env

        os.environ["KAGGLE_API_ENVIRONMENT"] = "TEST"  # served under <endpoint>/api/v1/<service>/<method>
        kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.TEST] = environ["R1HELPERS_KAGGLE_API_ENDPOINT"].rstrip("/")
    kagglehub.model_upload(handle, str(folder), license_name=license_name, version_notes=version_notes)
    return {"uploaded": True, "handle": handle,
            "message": f"adapter kept as the private Kaggle Model {handle} (credentials: {source})"}


def keep_in_working(run_root: str | os.PathLike, environ: Mapping[str, str] = os.environ,
                    limit_bytes: int | None = None) -> list[str]:
    """On Kaggle, copy stage 05's adapter and the largest GGUF file that fits into `<run>/kept/`, so the saved
    version holds them (the exports are on /kaggle/tmp, which no version keeps). Returns lines to print."""
    run = Path(run_root)
    record = run / "export" / "exported.json"
    if not on_kaggle(environ) or not record.is_file():
        return []
    out, kept = Path(json.loads(record.read_text())["output_dir"]), run / KEPT
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        return []  # the exports are already in the run folder, in /kaggle/working
    shutil.rmtree(kept, ignore_errors=True)
    lines = []
    if (out / "adapter").is_dir():
        shutil.copytree(out / "adapter", kept / "adapter")
        lines.append(f"Kaggle: the adapter is kept in {kept / 'adapter'} (saved with this version)")
    working = sum(p.stat().st_size for p in paths(environ=environ).working.rglob("*") if p.is_file())
    limit = limit_bytes if limit_bytes is not None else int(WORKING_USABLE_GB * 1e9)
    free = limit - working - 200_000_000  # notebooks and logs still to come
    ggufs = sorted((out / "gguf").glob("*.gguf"), key=lambda p: p.stat().st_size, reverse=True)
    fitting = [g for g in ggufs if g.stat().st_size <= free]
    if fitting:
        (kept / "gguf").mkdir(parents=True, exist_ok=True)
        for path in (fitting[0], out / "gguf" / "Modelfile", out / "gguf" / "README.md"):
            if path.is_file():
                shutil.copy2(path, kept / "gguf" / path.name)
        lines.append(f"Kaggle: {fitting[0].name} ({fitting[0].stat().st_size / 1e9:.2f} GB), the largest GGUF that "
                     f"fits /kaggle/working's {WORKING_USABLE_GB} GB, is kept in {kept / 'gguf'}")
    elif ggufs:
        lines.append(f"Kaggle: no GGUF fits in /kaggle/working ({max(free, 0) / 1e9:.1f} GB left); they stay in "
                     f"{out / 'gguf'} until the session ends")
    return lines


def keep_model(run_root: str | os.PathLike, base_model: str, environ: MutableMapping[str, str] = os.environ,
               dry_run: bool = False) -> list[str]:
    """After stage 05 on Kaggle: `keep_in_working`, then the adapter as a private Kaggle Model (or why not).
    R1HELPERS_KAGGLE_DRY_RUN=1 (the pipeline's --dry-run) uploads nothing."""
    if not on_kaggle(environ):
        return []
    lines = keep_in_working(run_root, environ)
    adapter = Path(run_root) / KEPT / "adapter"
    if not adapter.is_dir():
        adapter = Path(run_root) / "train" / "adapter"
    result = upload_kaggle_model(adapter, base_model=base_model, run_name=Path(run_root).name, environ=environ,
                                 dry_run=dry_run or environ.get("R1HELPERS_KAGGLE_DRY_RUN") == "1")
    return lines + [str(result["message"])]
