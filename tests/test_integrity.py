"""A run folder belongs to one run: finished work is never silently replaced, and failures say what to do.

Each test reproduces one way work was lost or a user was misled (issue 13) and fails on the code
before the fix: a later stage retraining over a finished adapter, the profile chosen again in each
notebook, two processes writing one folder, a stage failure ending in a long traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from r1helpers.core.config import ConfigError, apply_overrides, load_config
from r1helpers.core.runs import Run, RunFolderConflict, write_json_atomic
from r1helpers.pipeline import _keep_failed, failure_paragraph
from r1helpers.workflow import session

ROOT = Path(__file__).resolve().parents[1]


# ---- 1: a later stage never replaces a finished adapter -------------------------------------------

def _finished_train(run: Run, cfg) -> None:
    """A finished training stage as stage 03 leaves it (manifest last)."""
    for name in ("adapter",):
        run.path(name).mkdir(parents=True, exist_ok=True)
        (run.path(name) / "adapter_model.safetensors").write_bytes(b"weights")
    write_json_atomic(run.path("log_history"), [{"step": 1, "loss": 1.0}])
    write_json_atomic(run.path("train_metrics"), {"train_loss": 1.0})
    run.write_manifest(cfg, "train")


def test_other_settings_are_refused_naming_the_fields_and_nothing_is_touched(tmp_path, cpu_cfg):
    run = Run.open(tmp_path / "run")
    _finished_train(run, cpu_cfg)
    built = []
    with pytest.raises(RunFolderConflict) as e:
        run.reuse_or_build(apply_overrides(cpu_cfg, {"lora.r": 4}), "train", lambda: built.append(1), lambda: None)
    text = str(e.value)
    assert "lora.r" in text and "--run-dir" in text and "--overwrite" in text and "nothing is deleted" in text
    assert not built and (run.path("adapter") / "adapter_model.safetensors").read_bytes() == b"weights"


def test_overwrite_moves_the_finished_adapter_aside_never_deletes_it(tmp_path, cpu_cfg):
    run = Run.open(tmp_path / "run", overwrite=True)
    _finished_train(run, cpu_cfg)
    run.reuse_or_build(apply_overrides(cpu_cfg, {"lora.r": 4}), "train", lambda: "trained", lambda: None, say=None)
    kept = list((run.root / "replaced").glob("train-*/adapter/adapter_model.safetensors"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"weights"


def test_same_settings_reuse_and_cheap_stages_rebuild(tmp_path, cpu_cfg):
    run = Run.open(tmp_path / "run")
    _finished_train(run, cpu_cfg)
    assert run.reuse_or_build(cpu_cfg, "train", lambda: "built", lambda: "reused", say=None) == "reused"
    # Generations cost minutes, not an adapter: other settings rebuild them in place.
    run.path("baseline").parent.mkdir(parents=True)
    run.path("baseline").write_text("{}\n")
    run.write_manifest(cpu_cfg, "baseline")
    other = apply_overrides(cpu_cfg, {"infer.max_new_tokens": 7})
    assert run.reuse_or_build(other, "baseline", lambda: "built", lambda: "reused", say=None) == "built"


def test_a_value_changed_in_a_notebook_cell_is_checked_by_the_runner(tmp_path, cpu_cfg):
    run = Run.open(tmp_path / "run")
    cfg = load_config("cpu")
    cfg.lora.dropout = 2.0  # what a notebook cell may do
    with pytest.raises(ConfigError, match="lora.dropout"):
        run.reuse_or_build(cfg, "train", lambda: None, lambda: None)


# ---- 2: the profile is resolved once per run folder --------------------------------------------

def test_auto_is_resolved_once_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr("r1helpers.core.recipes.auto_profile", lambda: ("cpu", "no CUDA GPU"))
    cfg, run = session.start(str(tmp_path / "run"), "auto", secrets=False, quiet=True)
    assert cfg.profile == "cpu" and json.loads((run.root / "run.json").read_text())["profile"] == "cpu"
    # Later the Hub answers and a GPU appears: a notebook opened with `auto` keeps the recorded profile.
    monkeypatch.setattr("r1helpers.core.recipes.auto_profile", lambda: ("seed", "CUDA GPU and Hub reachable"))
    cfg2, _ = session.start(str(tmp_path / "run"), "auto", secrets=False, quiet=True)
    assert cfg2.profile == "cpu"


def test_another_profile_or_model_for_a_run_folder_is_refused(tmp_path):
    session.start(str(tmp_path / "run"), "cpu", secrets=False, quiet=True)
    with pytest.raises(ConfigError, match="was made for profile 'cpu'"):
        session.start(str(tmp_path / "run"), "cpu", {"model.name": "someone/other-model"}, secrets=False, quiet=True)
    cfg, _ = session.start(str(tmp_path / "run"), "cpu", {"model.name": "someone/other-model"}, secrets=False,
                           quiet=True, overwrite=True)
    assert cfg.model.name == "someone/other-model"


# ---- 7, 8: failures end with one paragraph ----------------------------------------------------

def test_a_cut_off_notebook_is_not_kept_as_if_it_were_readable(tmp_path):
    partial, failed = tmp_path / "02.running.ipynb", tmp_path / "02.failed.ipynb"
    partial.write_text('{"cells": [{"cell_type": "code", "sou')  # what a full disk leaves
    assert _keep_failed(partial, failed) is None and not failed.exists() and not partial.exists()


def test_failure_paragraphs_say_what_to_do():
    full = failure_paragraph("03", "OSError", "[Errno 28] No space left on device", Path("/r/03.failed.ipynb"))
    assert "disk is full" in full and "run the same command again" in full and "/r/03.failed.ipynb" in full
    assert "\n" not in full
    ro = failure_paragraph("02", "OSError", "[Errno 30] Read-only file system: '/ro/data'", None)
    assert "--run-dir" in ro
    own = failure_paragraph("02", "DataError", "data.jsonl, row 3, column Question: empty. Fix it.", None)
    assert own.startswith("Stage 02 stopped: data.jsonl, row 3")


@pytest.mark.slow
def test_a_stage_failure_ends_with_one_paragraph_and_keeps_the_notebook(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"Question": "q", "Complex_CoT": "c"}\n')  # no Response column
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "r1helpers.pipeline", "--run-dir", str(run_dir), "--profile", "cpu", "--quiet",
         "--stages", "00,02", "--set", f"data.source={bad}"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    # One paragraph. The kernels' own messages (ipykernel's start-up warning about its TCP transport,
    # or libzmq's "Assertion failed: pfd.revents & POLLIN" when a kernel exits mid-poll, which once
    # broke this test in CI) go to each stage's kernel log, not to the console.
    err = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: Stage 02 stopped:"), proc.stderr[-3000:]
    assert "Response" in err[0] and "02_data_preparation.failed.ipynb" in err[0]
    assert "Traceback" not in proc.stderr
    assert (run_dir / "notebooks" / "02_data_preparation.failed.ipynb").is_file()
    assert "[IPKernelApp]" in (run_dir / "notebooks" / "02_data_preparation.kernel.log").read_text()


@pytest.mark.slow
def test_a_dead_kernel_ends_with_one_paragraph_naming_its_log(tmp_path, monkeypatch, pipeline_env):
    """A kernel killed mid-cell (the system's out-of-memory killer, a crash in native code) was a
    traceback from nbclient; now it is the stage's paragraph, pointing at the kernel's own log."""
    import nbformat

    from r1helpers import pipeline

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("run_dir = profile = config_file = overwrite = None\noverrides = {}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import os\nos._exit(9)  # as a kill would")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, str(tmp_path / "nb" / pipeline.NOTEBOOKS["00"]))
    monkeypatch.setattr(pipeline, "notebooks_dir", lambda: tmp_path / "nb")
    with pytest.raises(pipeline.StageFailed) as e:
        pipeline.run_notebooks(tmp_path / "run", "cpu", stages=["00"], log_output=False)
    log = tmp_path / "run" / "notebooks" / "00_setup.kernel.log"
    assert str(e.value).startswith("Stage 00 stopped: its kernel died") and str(log) in str(e.value)
    assert "00_setup.failed.ipynb" in str(e.value) and log.is_file()


# ---- 12: two runs on one folder ----------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from r1helpers.core.config import load_config
    from r1helpers.core.runs import Run
    run = Run.open(sys.argv[1])
    cfg = load_config("cpu")
    def build():
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
        run.path("baseline").parent.mkdir(parents=True, exist_ok=True)
        run.path("baseline").write_text("{}\\n")
        run.write_manifest(cfg, "baseline")
        return "built"
    print(run.reuse_or_build(cfg, "baseline", build, lambda: "reused", say=None), flush=True)
""")


def _holder(tmp_path, seconds: str, wait: bool = False):
    """HOLDER on tmp_path/run: started in the background, or (wait) run to its end."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    cmd, env = [sys.executable, str(script), str(tmp_path / "run"), seconds], {**os.environ, "PYTHONPATH": str(ROOT)}
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_run_on_the_folder_says_who_holds_it_and_waits(tmp_path):
    first = _holder(tmp_path, "4")
    assert first.stdout.readline().strip() == "holding"
    t0 = time.perf_counter()
    second = _holder(tmp_path, "0", wait=True)
    assert first.wait(timeout=60) == 0 and first.stdout.read().strip() == "built"
    assert f"being written by pid {first.pid}" in second.stdout and "waiting" in second.stdout
    assert second.stdout.strip().splitlines()[-1] == "reused", second.stdout + second.stderr
    assert time.perf_counter() - t0 > 1.0


@pytest.mark.slow
def test_a_killed_holder_releases_the_folder(tmp_path):
    first = _holder(tmp_path, "600")
    assert first.stdout.readline().strip() == "holding"
    first.kill()
    first.wait()
    second = _holder(tmp_path, "0", wait=True)
    assert second.stdout.strip().splitlines()[-1] == "built", second.stdout + second.stderr


# ---- 9, 13: data that cannot be used as given --------------------------------------------------

def test_lenient_advice_with_one_usable_row_is_the_fix_that_works():
    import datasets

    from r1helpers.data import DataError, select_rows

    ds = datasets.Dataset.from_list([{"Question": "q", "Complex_CoT": "c", "Response": "r"},
                                     {"Question": "", "Complex_CoT": "c", "Response": "r"}])
    with pytest.raises(DataError) as e:
        select_rows(ds, train_rows=1, eval_rows=5, lenient=True)
    assert "data.eval_rows=0" in str(e.value) and "lower data.train_rows" not in str(e.value)
    train, held = select_rows(ds, train_rows=1, eval_rows=0, lenient=True)
    assert len(train) == 1 and held == []


def test_integer_columns_in_parquet_are_refused_with_name_and_type(tmp_path):
    import pandas as pd

    from r1helpers.data import DataError, select_rows
    from r1helpers.data_sources import load_rows

    path = tmp_path / "rows.parquet"
    pd.DataFrame({"Question": ["q1", "q2", "q3"], "Complex_CoT": ["c1", "c2", "c3"], "Response": [1, 10, 3]}
                 ).to_parquet(path)
    ds, origin = load_rows(str(path))
    with pytest.raises(DataError, match=r"column 'Response' holds int64 values \(row 0: 1\), not text"):
        select_rows(ds, train_rows=2, eval_rows=1, origin=origin)


# ---- 11: W&B forced online without a network ---------------------------------------------------

def test_forced_online_wandb_without_network_logs_offline_with_a_note(monkeypatch, cpu_cfg):
    import socket

    from r1helpers.workflow.tracking import wandb_choice

    pytest.importorskip("wandb")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    cfg = apply_overrides(cpu_cfg, {"train.wandb": "online"})
    mode, note = wandb_choice(cfg)
    assert mode == "offline" and f"127.0.0.1:{port} does not answer" in note and "wandb sync" in note
    with socket.socket() as server:  # the client's own host and port answer: online as asked
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_choice(cfg)[0] == "online"


# ---- 3: what the notebooks print reaches the console ------------------------------------------

@pytest.mark.slow
def test_notebook_output_reaches_the_console_with_verbose_and_the_log_always(tmp_path):
    """The console is quiet by default (a progress bar and a result line per stage); what a notebook prints is
    in the stage's log either way, and on the console with --verbose."""
    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "r1helpers.pipeline", "--run-dir", str(tmp_path / "run"), "--profile", "cpu",
             "--stages", "00", *extra], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
            text=True, timeout=600)

    quiet = run()
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "run folder:" not in quiet.stdout + quiet.stderr and "00 done" in quiet.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "notebooks").glob("00_*.log"))
    assert "run folder:" in logs, "what notebook 00 printed is in its stage log"
    verbose = run("--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "run folder:" in verbose.stdout + verbose.stderr, "a line printed inside notebook 00 reaches the console"
