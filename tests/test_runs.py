import pytest

from r1helpers.core.config import load_config
from r1helpers.core.runs import Run, atomic_dir, write_json_atomic, read_json


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    final = tmp_path / "adapter"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (final / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_manifest_detects_changed_settings(tmp_path):
    run = Run.open(tmp_path / "run")
    cfg = load_config("cpu")
    assert not run.is_current(cfg, "train")
    run.write_manifest(cfg, "train")
    assert not run.is_current(cfg, "train"), "a manifest without its outputs is not a finished stage"
    assert "missing" in run.why_stale(cfg, "train")
    run.path("adapter").mkdir(parents=True)
    write_json_atomic(run.path("log_history"), [])
    write_json_atomic(run.path("train_metrics"), {})
    assert run.is_current(cfg, "train")
    changed = load_config("cpu", {"train.learning_rate": 1e-4})
    assert not run.is_current(changed, "train")
    assert "train.learning_rate" in run.why_stale(changed, "train")
    # Settings the stage does not depend on do not make it stale.
    assert run.is_current(load_config("cpu", {"infer.max_new_tokens": 7}), "train")
    assert not run.is_current(load_config("cpu", {"infer.max_new_tokens": 7}), "baseline")


def test_kill_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
    """Replacing a folder is two renames; interrupted between them, the previous output comes back
    at once (an exception) or when the run folder next opens (a kill, which runs no handler)."""
    import os

    from r1helpers.core import runs

    final = tmp_path / "train" / "adapter"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("good")
    real_replace, calls = os.replace, []

    def second_rename_interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old aside done, new one not yet in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(runs.os, "replace", second_rename_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "weights").write_text("new")
    monkeypatch.setattr(runs.os, "replace", real_replace)
    assert (final / "weights").read_text() == "good"
    assert sorted(p.name for p in final.parent.iterdir()) == ["adapter"]

    # SIGKILL in the same place: the old output sits aside and nothing is at its path.
    aside = final.with_name(f".adapter{runs.OLD_MARK}123-{10**18}")
    os.replace(final, aside)
    stale = final.with_name(f".adapter{runs.OLD_MARK}99-{10**17}")  # an older leftover
    stale.mkdir()
    Run.open(tmp_path)
    assert (final / "weights").read_text() == "good"
    assert sorted(p.name for p in final.parent.iterdir()) == ["adapter"], "superseded copies are deleted"


def test_next_save_clears_the_temporary_folder_of_a_killed_one(tmp_path):
    from r1helpers.core.runs import atomic_dir

    killed = tmp_path / ".merged_16bit.abc123.tmp"
    killed.mkdir()
    (killed / "model-00001-of-00004.safetensors").write_bytes(b"x" * 1024)
    other = tmp_path / ".adapter.zzz.tmp"
    other.mkdir()
    with atomic_dir(tmp_path / "merged_16bit") as tmp:
        (tmp / "model.safetensors").write_bytes(b"y")
    assert not killed.exists() and other.exists()
    assert (tmp_path / "merged_16bit" / "model.safetensors").read_bytes() == b"y"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.zzz.tmp", "merged_16bit"]


def test_export_goes_stale_when_the_comparison_it_quotes_changes():
    from r1helpers.core.config import load_config
    from r1helpers.core.runs import stage_fingerprint

    cfg = load_config("cpu")
    assert stage_fingerprint(cfg, "export") != stage_fingerprint(load_config("cpu", {"compare.nll_rows": 3}), "export")
    assert stage_fingerprint(cfg, "export") != stage_fingerprint(load_config("cpu", {"infer.max_new_tokens": 9}), "export")
    assert stage_fingerprint(cfg, "export") == stage_fingerprint(load_config("cpu", {"train.save_steps": 3}), "export")


def test_record_results_writes_json_and_returns_one_column(tmp_path):
    from r1helpers.core.show import record_results

    run = Run.open(tmp_path / "run")
    table = record_results(run, "02", {"rows trained": 500, "median tokens": 731.5, "note": None})
    assert read_json(run.root / "results" / "02.json") == {"rows trained": 500, "median tokens": 731.5, "note": None}
    assert list(table.columns) == ["value"] and list(table.index) == ["rows trained", "median tokens", "note"]
    assert table.loc["rows trained", "value"] == 500
    record_results(run, "02", {"rows trained": 8})  # a rerun replaces the file whole
    assert read_json(run.root / "results" / "02.json") == {"rows trained": 8}
    assert sorted(p.name for p in (run.root / "results").iterdir()) == ["02.json"]


def test_a_temporary_folder_another_live_process_is_writing_is_left_alone(tmp_path):
    """Two processes building the same output (two runs starting at once) must not delete each other's work."""
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tiny-llama.{writer.pid}.x1.tmp"
        live.mkdir()
        dead = tmp_path / ".tiny-llama.999999999.x2.tmp"
        dead.mkdir()
        with atomic_dir(tmp_path / "tiny-llama") as tmp:
            (tmp / "f").write_text("x")
        assert live.is_dir() and not dead.exists() and (tmp_path / "tiny-llama" / "f").is_file()
    finally:
        writer.kill()
        writer.wait()


def test_a_lock_held_past_the_timeout_ends_in_one_paragraph(tmp_path, monkeypatch):
    import subprocess
    import sys

    from r1helpers.core.runs import RunFolderBusy

    run = Run.open(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from filelock import FileLock; "
         f"lock = FileLock({str(run.root / '.run.lock')!r}); lock.acquire(); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("R1HELPERS_LOCK_TIMEOUT", "0.3")
        with pytest.raises(RunFolderBusy, match="still being written .* R1HELPERS_LOCK_TIMEOUT=0.3 s"):
            with run.lock("train"):
                pass
    finally:
        holder.kill()
        holder.wait()
