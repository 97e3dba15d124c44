"""The run folder every notebook shares: each stage's outputs with a manifest fingerprinting the settings
that made them, reused only when the current config has the same fingerprint."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from r1helpers.core import config as config_mod
from r1helpers.core.config import Config

T = TypeVar("T")

# The multiple-choice questions each generation stage also answers (compare.mcq_generate).
MCQ_GENERATION = ("compare.mcq_source", "compare.mcq_split", "compare.mcq_rows", "compare.mcq_generate",
                  "compare.mcq_generate_rows")
# Which config sections each stage's outputs depend on (upstream stages included).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("model.name", "model.max_seq_length", "data"),
    "baseline": ("model", "data", "infer", *MCQ_GENERATION),
    "train": ("model", "data", "lora", "train"),
    "finetuned": ("model", "data", "lora", "train", "infer", *MCQ_GENERATION),
    "compare": ("model", "data", "lora", "train", "infer", "compare"),
    # The model card quotes the comparison, so a rerun of 04 with other settings refreshes the export.
    "export": ("model", "data", "lora", "train", "infer", "compare", "export"),
}


# Fields that change how a stage runs, never what it makes (metadata fingerprint=False).
NOT_FINGERPRINTED = [k for k, (_, f) in config_mod.FIELDS.items() if f.metadata.get("fingerprint") is False]


def stage_settings(cfg: Config, stage: str) -> dict[str, Any]:
    full = cfg.to_dict()
    for key in NOT_FINGERPRINTED:
        section, _, leaf = key.rpartition(".")
        full[section].pop(leaf, None)
    out: dict[str, Any] = {}
    for key in STAGE_SECTIONS[stage]:
        section, _, leaf = key.partition(".")
        out[key] = full[section][leaf] if leaf else full[section]
    return out


def stage_fingerprint(cfg: Config, stage: str) -> str:
    return config_mod.fingerprint(stage_settings(cfg, stage))


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path` and rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


OLD_MARK = ".old-"  # `.<name>.old-<pid>-<ns>`: the previous output, moved aside for one rename


def restore_moved_aside(folder: Path) -> list[Path]:
    """Put back outputs that a kill between atomic_dir's two renames left moved aside (`.<name>.old-*`);
    one whose new output did arrive is a superseded copy, and is deleted (merged models take gigabytes)."""
    restored = []
    folder = Path(folder)
    if not folder.is_dir():
        return restored
    moved = sorted(folder.glob(f".*{OLD_MARK}*"), key=lambda p: p.name.rsplit("-", 1)[-1].zfill(24), reverse=True)
    for old in moved:  # newest first: the one a killed swap moved aside last
        final = folder / old.name[1:].rsplit(OLD_MARK, 1)[0]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # another process (a DDP rank) restored it first
                os.replace(old, final)
                restored.append(final)
    return restored


def _writer_alive(pid_text: str) -> bool:
    """Whether the process whose pid a temporary folder's name holds is still running (not this one)."""
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    return True  # running (PermissionError: someone else's)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final`, which stays until then."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    restore_moved_aside(final.parent)
    # A killed save's temporary folder (gigabytes for a merged model) goes, unless its writer still runs.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if stale.is_dir() and not _writer_alive(stale.name[len(final.name) + 2:].split(".", 1)[0]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp"))
    old = None
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}-{time.time_ns()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():  # interrupted between the two renames
            os.replace(old, final)
        raise


# Every named output of a run folder, relative to its root; stages use them through `run.path(name)`.
OUTPUTS: dict[str, str] = {
    "dataset": "data/dataset",
    "data_stats": "data/stats.json",
    "baseline": "baseline/generations.jsonl",
    "baseline_mcq": "baseline/mcq_generations.jsonl",
    "adapter": "train/adapter",
    "checkpoints": "train/checkpoints",
    "log_history": "train/log_history.json",
    "train_metrics": "train/metrics.json",
    "finetuned": "finetuned/generations.jsonl",
    "finetuned_mcq": "finetuned/mcq_generations.jsonl",
    "comparison": "compare/comparison.json",
    "exported": "export/exported.json",
}
# What must exist, besides a manifest with matching settings, for a stage to count as done.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_stats"),
    "baseline": ("baseline",),
    "train": ("adapter", "log_history", "train_metrics"),
    "finetuned": ("finetuned",),
    "compare": ("comparison",),
    "export": ("exported",),
}


# Finished outputs that cost real time: other settings are refused unless `overwrite`, which moves them
# aside under <run>/replaced/ (never deleted).
PROTECTED_STAGES = ("train", "export")


class RunFolderConflict(RuntimeError):
    """The run folder holds finished work made with other settings; replacing it needs an explicit overwrite."""


class RunFolderBusy(RuntimeError):
    """Another process is writing this run folder."""


@dataclass
class Run:
    """Paths of one run folder (`Run.open(run_dir)`); every stage goes through `reuse_or_build`."""

    root: Path
    overwrite: bool = False  # replace finished work made with other settings (moved aside, never deleted)

    @classmethod
    def open(cls, root: str | os.PathLike, overwrite: bool = False) -> "Run":
        run = cls(Path(root).expanduser().resolve(), overwrite)
        blocking = next((p for p in (run.root, *run.root.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise config_mod.ConfigError(
                f"run_dir: {blocking} is a file, not a folder, so the run folder {run.root} cannot be made there. "
                "Pass --run-dir (run_dir in the parameters) a folder path, new or existing, or move that file away."
            )
        run.root.mkdir(parents=True, exist_ok=True)
        for folder in (run.root, *(p for p in run.root.iterdir() if p.is_dir() and not p.name.startswith("."))):
            restore_moved_aside(folder)
        return run

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def path(self, name: str) -> Path:
        """A named output (OUTPUTS), e.g. run.path("adapter")."""
        if name not in OUTPUTS:
            raise KeyError(f"{name!r} is not a run-folder output; known: {', '.join(OUTPUTS)}")
        return self.root / OUTPUTS[name]

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    def save_config(self, cfg: Config) -> None:
        write_text_atomic(self.config_path, config_mod.dump(cfg))

    def manifest_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "manifest.json"

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError(f"it holds {type(manifest).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as e:
            raise RunFolderConflict(
                f"{path} is not a readable manifest ({type(e).__name__}: {str(e)[:120]}; cut short or edited), so "
                f"the {stage} outputs beside it cannot be checked against the settings they were made with. Delete "
                f"that file to let the stage rebuild its outputs (or restore it from a copy of the run folder), then "
                "run the same command again."
            ) from None
        return manifest

    def is_current(self, cfg: Config, stage: str) -> bool:
        """The stage finished with `cfg`'s settings and its outputs (STAGE_OUTPUTS, the manifest's `must_exist`)
        are all there."""
        manifest = self.read_manifest(stage)
        return (bool(manifest) and manifest.get("fingerprint") == stage_fingerprint(cfg, stage)
                and not self._missing(stage, manifest))

    def _missing(self, stage: str, manifest: dict[str, Any]) -> list[str]:
        names = [str(self.path(n)) for n in STAGE_OUTPUTS.get(stage, ())]
        return [p for p in names + list(manifest.get("must_exist", [])) if not Path(p).exists()]

    def why_stale(self, cfg: Config, stage: str) -> str:
        manifest = self.read_manifest(stage)
        if manifest is None:
            return f"{stage}: no finished output in {self.stage_dir(stage)}"
        missing = self._missing(stage, manifest)
        if manifest.get("fingerprint") == stage_fingerprint(cfg, stage) and missing:
            return f"{stage}: {', '.join(missing)} missing"
        changed = differing_fields(manifest.get("settings", {}), stage_settings(cfg, stage))
        return f"{stage}: made with other settings ({', '.join(changed[:6]) or 'unknown'})"

    def reuse_or_build(self, cfg: Config, stage: str, build: Callable[[], T], load: Callable[[], T],
                       force: bool = False, say: Callable[[str], None] | None = print) -> T:
        """`load()` what `stage` holds when made with these settings, else `build()` (outputs, then the manifest,
        so one killed half-way never looks finished); `say` gets one line saying which and why."""
        config_mod.validate(cfg)  # a notebook may have changed a value in place: same checks as when loaded
        with self.lock(stage):
            if not force and self.is_current(cfg, stage):
                if say:
                    say(f"{stage}: reusing {self.stage_dir(stage)} (made with these settings)")
                return load()
            self.refuse_or_move_aside(cfg, stage, force)
            if say:
                say(f"{stage}: rebuilding (force=True)" if force else self.why_stale(cfg, stage) + ": building it")
            return build()

    def refuse_or_move_aside(self, cfg: Config, stage: str, force: bool = False) -> Path | None:
        """Before a protected stage is rebuilt over finished work: refuse, or with `overwrite` move it aside
        to <run>/replaced/<stage>-<time>/ (one rename; nothing is deleted)."""
        manifest = self.read_manifest(stage)
        same = manifest is not None and manifest.get("fingerprint") == stage_fingerprint(cfg, stage)
        if stage not in PROTECTED_STAGES or manifest is None or (same and not force):
            return None
        if not self.overwrite:
            what = "a trained adapter and its checkpoints" if stage == "train" else "finished exports"
            changed = differing_fields(manifest.get("settings", {}), stage_settings(cfg, stage))
            differ = "none (a rebuild was forced)" if same else ", ".join(changed[:8]) or "unknown"
            raise RunFolderConflict(
                f"{self.stage_dir(stage)} holds {what} made with other settings (fields that differ: {differ}), "
                f"and this run folder belongs to that run, so it is not replaced. Either run with a new run folder "
                f"(--run-dir, or run_dir in the notebook's parameters), or pass --overwrite (overwrite=True in the "
                f"parameters) to move the old outputs aside to {self.root / 'replaced'}/ first; nothing is deleted."
            )
        dest = self.root / "replaced" / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.stage_dir(stage), dest)
        print(f"{stage}: the previous outputs (other settings) moved aside to {dest}", flush=True)
        return dest

    @contextlib.contextmanager
    def lock(self, what: str = "run") -> Iterator[None]:
        """Hold the run folder's lock (filelock: a killed holder releases it) while a stage checks and writes.

        A second process says who holds it and waits. Re-entrant; under DDP only rank 0 locks.
        """
        if int(os.environ.get("RANK") or 0) != 0:
            yield
            return
        from filelock import FileLock, Timeout

        lock = _LOCKS.setdefault(str(self.root), FileLock(str(self.root / ".run.lock")))
        holder = self.root / ".run.lock.json"
        try:
            lock.acquire(timeout=0)
        except Timeout:
            info = read_json(holder) if holder.is_file() else {}
            print(f"{what}: the run folder {self.root} is being written by pid {info.get('pid', '?')} since "
                  f"{info.get('since', '?')} ({info.get('command', '?')}); waiting for it to finish", flush=True)
            try:
                lock.acquire(timeout=float(os.environ.get("R1HELPERS_LOCK_TIMEOUT", "-1")))
            except Timeout:
                raise RunFolderBusy(
                    f"{what}: the run folder {self.root} is still being written by pid {info.get('pid', '?')} after "
                    f"R1HELPERS_LOCK_TIMEOUT={os.environ.get('R1HELPERS_LOCK_TIMEOUT')} s. Wait for that process to "
                    f"finish (or stop it), or use another run folder, then run the same command again."
                ) from None
        try:
            if lock.lock_counter == 1:
                import sys

                write_json_atomic(holder, {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "command": " ".join(sys.argv)[:300], "stage": what})
            yield
        finally:
            lock.release()

    def write_manifest(self, cfg: Config, stage: str, **extra: Any) -> dict[str, Any]:
        from r1helpers.core.hardware import package_versions

        manifest = {
            "stage": stage,
            "fingerprint": stage_fingerprint(cfg, stage),
            "settings": stage_settings(cfg, stage),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
            **extra,
        }
        write_json_atomic(self.manifest_path(stage), manifest)
        if int(os.environ.get("RANK") or 0) == 0:
            self.record_config(cfg, stage)
        return manifest

    def record_config(self, cfg: Config, stage: str) -> None:
        """Update config.yaml's sections that `stage` depends on (STAGE_SECTIONS) to cfg's values, so it
        describes what the folder holds."""
        import yaml

        try:
            current = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
            new = cfg.to_dict()
            for key in STAGE_SECTIONS[stage]:
                section, _, leaf = key.partition(".")
                if leaf:
                    current.setdefault(section, {})[leaf] = new[section][leaf]
                else:
                    current[section] = new[section]
            merged = config_mod.dump(config_mod.from_dict(current))
        except Exception:  # none yet, or unreadable: this stage's settings are the best description
            merged = config_mod.dump(cfg)
        write_text_atomic(self.config_path, merged)


_LOCKS: dict[str, Any] = {}


def differing_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the fields whose values differ between two settings trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += differing_fields(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]
