"""Issue 24/25: the Kaggle kernels as one series, a model that outlives the session, and the pipeline's console.

Kaggle and the Hugging Face Hub are simulated by one local server (127.0.0.1) that records every call.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import venv
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from r1helpers import kaggle, kaggle_model, pipeline
from r1helpers.core import kaggle_paths
from r1helpers.core.config import ConfigError
from r1helpers.training.sft import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ---------------------------------------------------------------- a local Kaggle API and Hub, recording calls


class Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict]] = []

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _json(self, data, code=200):
        blob = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def do_GET(self):
        self.calls.append(("GET", self.path, {}))
        if self.path.startswith("/api/whoami"):
            return self._json({"name": "alice", "type": "user", "auth": {"accessToken": {"role": "write"}}})
        self._json({"error": "not found"}, 404)

    def do_PUT(self):  # a blob upload (kagglehub's resumable GCS upload)
        body = self._body()
        self.calls.append(("PUT", self.path, {"bytes": len(body)}))
        self._json({})

    def do_POST(self):
        raw = self._body()
        try:
            body = json.loads(raw) if raw and not self.path.endswith("/commit/main") else {}
        except ValueError:
            body = {}
        if self.path.endswith("/commit/main"):  # the Hub's ndjson commit: header, then one line per file
            lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            body = {"files": [ln["value"]["path"] for ln in lines if ln.get("key") == "file"]}
        self.calls.append(("POST", self.path, body))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/v1/models.ModelApiService/GetModel":
            return self._json({"code": 404, "message": "not found"}, 404)
        if self.path == "/api/v1/blobs.BlobApiService/StartBlobUpload":
            n = len(self.calls)
            return self._json({"token": f"blob-{n}", "createUrl": f"{base}/upload/{n}"})
        if self.path.startswith("/api/v1/"):
            return self._json({})
        if self.path == "/api/validate-yaml":  # the model card's metadata
            return self._json({"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            return self._json({"url": f"{base}/{body.get('organization', 'alice')}/{body.get('name')}",
                               "name": body.get("name")})
        m = re.match(r"/api/models/(.+)/preupload/main", self.path)
        if m:
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in body.get("files", [])]})
        if self.path.endswith("/commit/main"):
            repo = self.path.split("/api/models/")[1].split("/commit")[0]
            return self._json({"commitUrl": f"{base}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40})
        self._json({"error": "not found"}, 404)


@pytest.fixture
def server():
    Recorder.calls = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, Recorder.calls
    srv.shutdown()


def kaggle_env(tmp: Path, name: str, port: int | None = None) -> dict[str, str]:
    """A simulated Kaggle kernel: its own /kaggle (input, working, tmp) under tmp/name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "HF_TOKEN", "R1HELPERS_"))}
    env.update({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "R1HELPERS_KAGGLE_ROOT": str(tmp / name),
                "R1HELPERS_NO_INSTALL": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
                "KAGGLE_CONFIG_DIR": str(tmp / name / "no-kaggle-config")})
    if port:
        env.update({"R1HELPERS_KAGGLE_API_ENDPOINT": f"http://127.0.0.1:{port}", "KAGGLE_USERNAME": "alice",
                    "KAGGLE_KEY": "k" * 32, "HF_TOKEN": "x" * 12, "HF_ENDPOINT": f"http://127.0.0.1:{port}",
                    "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost"})
    (tmp / name / "working").mkdir(parents=True, exist_ok=True)
    return env


# ---------------------------------------------------------------- the Kaggle Model


def test_adapter_kept_as_a_private_kaggle_model_through_kagglehub(tmp_path, server, monkeypatch):
    pytest.importorskip("kagglehub")
    srv, calls = server
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    environ = {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k" * 32,
               "R1HELPERS_KAGGLE_API_ENDPOINT": f"http://127.0.0.1:{srv.server_port}"}
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KAGGLE_API_ENVIRONMENT", raising=False)
    result = kaggle_model.upload_kaggle_model(adapter, base_model="org/DeepSeek-R1-Distill-Llama-8B",
                                              run_name="default", environ=dict(os.environ))
    assert result["uploaded"] is True
    assert result["handle"] == "alice/deepseek-r1-distill-llama-8b-medical-lora/transformers/default"
    posts = [path.rsplit("/", 1)[-1] for method, path, _ in calls if method == "POST"]
    assert posts[:2] == ["GetModel", "CreateModel"] and posts.count("StartBlobUpload") == 2
    assert posts[-1] == "CreateModelInstance"
    create = next(body for m, p, body in calls if p.endswith("/CreateModel"))
    assert create["isPrivate"] is True and create["ownerSlug"] == "alice"
    assert sorted(b["bytes"] for m, p, b in calls if m == "PUT") == [2, 1000]


def test_without_kaggle_credentials_it_says_which_settings_to_add(tmp_path):
    (tmp_path / "adapter").mkdir()
    result = kaggle_model.upload_kaggle_model(tmp_path / "adapter", environ={"KAGGLE_CONFIG_DIR": str(tmp_path)})
    assert result["uploaded"] is False
    assert "KAGGLE_USERNAME" in result["message"] and "KAGGLE_KEY" in result["message"]
    asked = kaggle_model.upload_kaggle_model(tmp_path / "adapter", dry_run=True,
                                             environ={"KAGGLE_USERNAME": "a", "KAGGLE_KEY": "b"})
    assert asked["uploaded"] is False and "dry run asked" in asked["message"]


def test_largest_gguf_that_fits_is_kept_in_working(tmp_path):
    environ = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "R1HELPERS_KAGGLE_ROOT": str(tmp_path)}
    run = tmp_path / "working" / "runs" / "default"
    out = tmp_path / "tmp" / "r1helpers" / "exports" / "default"
    (run / "export").mkdir(parents=True)
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 10)
    (out / "gguf").mkdir()
    for name, size in (("m-f16.gguf", 5000), ("m-q8_0.gguf", 2600), ("m-q4_k_m.gguf", 1500)):
        (out / "gguf" / name).write_bytes(b"g" * size)
    (out / "gguf" / "Modelfile").write_text("FROM ./m-q8_0.gguf")
    (run / "export" / "exported.json").write_text(json.dumps({"output_dir": str(out)}))
    lines = kaggle_model.keep_in_working(run, environ, limit_bytes=200_000_000 + 3000)
    assert (run / "kept" / "adapter" / "adapter_model.safetensors").is_file()
    assert [p.name for p in (run / "kept" / "gguf").iterdir()] and (run / "kept" / "gguf" / "m-q8_0.gguf").is_file()
    assert not (run / "kept" / "gguf" / "m-f16.gguf").exists() and "m-q8_0.gguf" in lines[-1]
    assert kaggle_model.keep_in_working(run, {}) == [], "off Kaggle the exports are in the run folder already"


# ---------------------------------------------------------------- Kaggle's folders from the environment


def test_kaggle_folders_follow_the_environment(tmp_path):
    environ = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "R1HELPERS_KAGGLE_ROOT": str(tmp_path / "k"),
               "R1HELPERS_KAGGLE_INPUT": str(tmp_path / "mounted")}
    p = kaggle_paths.paths(environ=environ)
    assert p.working == tmp_path / "k" / "working" and p.input == tmp_path / "mounted"
    assert kaggle_paths.resolve_run_dir("../runs/default", environ) == tmp_path / "k" / "working" / "runs" / "default"
    for n, stage in enumerate(("01", "03")):
        run = tmp_path / "mounted" / f"r1-medical-{stage}" / "runs" / "default"
        (run / "results").mkdir(parents=True)
        (run / "run.json").write_text("{}")
        (run / "config.yaml").write_text("")
        (run / "results" / f"{stage}.json").write_text("{}")
    assert [r.parts[-3] for r in kaggle_paths.attached_runs(environ)] == ["r1-medical-03", "r1-medical-01"]


# ---------------------------------------------------------------- issue 25: --run-dir . and Ctrl-C


def test_a_run_folder_over_the_notebooks_or_tracked_files_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="written over the notebooks being run") as e:
        pipeline.run_notebooks(ROOT, "cpu", stages=["00"])
    assert "nothing was written" in str(e.value) and "\n" not in str(e.value)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "keep.txt").write_text("mine")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "data/keep.txt"], check=True)
    with pytest.raises(ConfigError, match=r"holds files git tracks \(data/keep.txt\)"):
        pipeline.run_notebooks(repo, "cpu", stages=["00"])
    assert not (repo / "notebooks").exists() and not (repo / "run.json").exists()
    proc = subprocess.run([PY, "-m", "r1helpers.pipeline", "--run-dir", ".", "--profile", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_ctrl_c_during_training_stops_with_one_line(tmp_path):
    """A real SIGINT to the pipeline's process group while stage 03 trains: one line naming the checkpoint to
    resume from, exit 130, no *.running.ipynb, no kernel left running."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [PY, "-m", "r1helpers.pipeline", "--run-dir", str(run_dir), "--profile", "cpu", "--stages", "03",
         "--set", "train.max_steps=400", "--set", "train.save_steps=2", "--set", "train.eval_steps=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 900
    ckpts = run_dir / "train" / "checkpoints"
    while time.monotonic() < deadline and not any(ckpts.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(2)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err[-3000:]
    assert len(lines) == 1 and re.fullmatch(
        r"interrupted; run the same command again to resume from checkpoint-\d+", lines[0]), err[-3000:]
    assert "Traceback" not in err + out
    assert not list((run_dir / "notebooks").glob("*.running.ipynb"))
    assert lines[0].endswith(latest_checkpoint(ckpts).name)
    kernels = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    assert not kernels, "the stage's kernel was stopped"


# ---------------------------------------------------------------- two kernels, the second continuing the first


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_kernel_b_continues_kernel_a_without_training(tmp_path, server):
    """Kernel A runs notebook 03 with train.max_steps overridden. Kernel B (another process, its own
    /kaggle/working) gets A's output mounted read-only under /kaggle/input/<slug>/ and runs 04 and 05: it builds no
    trainer, keeps A's override, writes nothing outside its own folders, and with a Hugging Face token,
    export.hub_repo and Kaggle credentials it pushes the merged model to the Hub and keeps the adapter as a
    Kaggle Model (both recorded by the local server)."""
    srv, calls = server
    env_a = kaggle_env(tmp_path, "A")
    small = ["--set", "train.eval_steps=0", "--set", "infer.num_eval_questions=3", "--set", "compare.nll_rows=4",
             "--set", "compare.mcq_rows=4"]  # kept small for a CPU; they travel to B with the run's config
    a = subprocess.run([PY, "-m", "r1helpers.pipeline", "--profile", "cpu", "--stages", "03",
                        "--set", "train.max_steps=7", *small], cwd=tmp_path, env=env_a, capture_output=True, text=True,
                       timeout=1500)
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    run_a = tmp_path / "A" / "working" / "runs" / "default"
    assert json.loads((run_a / "train" / "log_history.json").read_text())[-1]["step"] == 7
    # Kaggle mounts kernel A's output (its /kaggle/working) read-only at /kaggle/input/<kernel slug>/
    mounted = tmp_path / "B" / "input" / "r1-medical-03-lora-training"
    shutil.copytree(tmp_path / "A" / "working", mounted)
    for p in sorted(mounted.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    mounted.chmod(0o555)
    before_input, before_a = _snapshot(mounted), _snapshot(tmp_path / "A")
    env_b = kaggle_env(tmp_path, "B", srv.server_port)
    try:
        b = subprocess.run([PY, "-m", "r1helpers.pipeline", "--stages", "04,05", "--set",
                            "export.hub_repo=alice/r1-medical", "--set", "export.gguf=[q8_0]"],
                           cwd=tmp_path, env=env_b, capture_output=True, text=True, timeout=1500)
        assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
        assert _snapshot(mounted) == before_input and _snapshot(tmp_path / "A") == before_a
    finally:
        for p in mounted.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        mounted.chmod(0o755)
    run_b = tmp_path / "B" / "working" / "runs" / "default"
    assert "continuing the attached run" in b.stdout and str(mounted) in b.stdout
    assert "max_steps: 7" in (run_b / "config.yaml").read_text(), "A's override holds in B"
    log04 = (run_b / "notebooks" / "04_before_after_comparison.kernel.log").read_text()
    assert "train: reusing" in log04 and "train: rebuilding" not in log04 and "building it" not in log04.split(
        "train:")[1].splitlines()[0]
    assert sorted(p.name for p in (run_b / "train" / "checkpoints").iterdir()) == sorted(
        p.name for p in (run_a / "train" / "checkpoints").iterdir()), "no new checkpoint: no trainer was built"
    assert (run_b / "train" / "log_history.json").read_text() == (run_a / "train" / "log_history.json").read_text()
    # written only under B's own folders (working; the large exports on B's /kaggle/tmp)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_mtime_ns > max(
        t for _, t in before_a.values()) and not str(p).startswith((str(tmp_path / "B" / "working"),
                                                                    str(tmp_path / "B" / "tmp")))]
    assert not [p for p in outside if "no-kaggle-config" not in str(p)], outside[:5]
    # the Hub: the merged model pushed for real; the Kaggle Model: the adapter
    commits = {p.split("/api/models/")[1].split("/commit")[0]: body["files"] for m, p, body in calls
               if p.endswith("/commit/main")}
    assert "alice/r1-medical" in commits and any(f.endswith(".safetensors") for f in commits["alice/r1-medical"])
    exported = json.loads((run_b / "export" / "exported.json").read_text())
    assert exported["hub"]["pushed"] is True
    kaggle_posts = [p.rsplit("/", 1)[-1] for m, p, _ in calls if p.startswith("/api/v1/")]
    assert "CreateModel" in kaggle_posts and kaggle_posts[-1] == "CreateModelInstance"
    notebook_05 = (run_b / "notebooks" / "05_export.ipynb").read_text()  # notebook 05's own cell keeps the model
    assert "adapter kept as the private Kaggle Model alice/" in notebook_05
    assert (run_b / "kept" / "adapter").is_dir() and list((run_b / "kept" / "gguf").glob("*.gguf"))


# ---------------------------------------------------------------- one kernel, the whole series, from the wheel


@pytest.mark.slow
def test_one_kernel_runs_the_series_from_the_installed_wheel(tmp_path):
    """The built series kernel, run with a fresh venv (outside the repository) that has only the built wheel of
    r1helpers (its dependencies visible through a .pth): papermill runs the six notebooks shipped in the wheel."""
    sys.path.insert(0, str(ROOT / "tools"))
    import kaggle_push

    b = kaggle_push.build(tmp_path / "build", "alice")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = subprocess.run([PY, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_deps.pth").write_text(deps + "\n")  # after the venv's own r1helpers; no editable finder
    env = kaggle_env(tmp_path, "K")
    env.pop("PYTHONPATH", None)
    (tmp_path / "K" / "input" / "r1helpers").mkdir(parents=True)
    shutil.copy2(next(b.dataset.glob("*.whl")), tmp_path / "K" / "input" / "r1helpers")
    series = next(k for k in b.kernels if k.name == "r1-medical-series")
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), str(series / "r1_medical_series.py"), "--profile", "cpu"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "K" / "working" / "runs" / "default"
    import nbformat

    for name in pipeline.NOTEBOOKS.values():
        nb = nbformat.read(run / "notebooks" / name, as_version=4)
        assert nb.metadata.papermill.input_path.startswith(site), "the notebooks shipped in the wheel"
    where = subprocess.run([str(py), "-c", "import r1helpers; print(r1helpers.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True).stdout
    assert where.startswith(site)
    lines = [ln for ln in proc.stdout.replace("\r", "\n").splitlines() if ln.strip() and "cells [" not in ln]
    assert len(lines) < 40, lines
    print(f"series from the wheel: {time.perf_counter() - t0:.0f} s, {len(lines)} console lines")


@pytest.mark.slow
def test_make_kaggle_builds_in_a_fresh_clone_without_venv(tmp_path):
    """`make kaggle` needs neither torch nor .venv: a throwaway venv with the build tool, seconds."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env.pop("KAGGLE_USERNAME", None)
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "kaggle", "PYTHON=python3"], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (clone / ".venv").exists() and seconds < 60, seconds
    assert len(list((clone / "build" / "kaggle").glob("*/kernel-metadata.json"))) == 7
    assert list((clone / "build" / "kaggle" / "r1helpers-dataset").glob("r1helpers-*.whl"))
    out = subprocess.run([str(clone / "build" / ".kaggle-venv" / "bin" / "python"), "-c",
                          "import importlib.util; print(importlib.util.find_spec('torch'))"],
                         capture_output=True, text=True).stdout
    assert out.strip() == "None", "built without torch"
    print(f"make kaggle in a fresh clone: {seconds:.1f} s")
