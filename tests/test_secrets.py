"""Secrets are found wherever a user keeps them and never leak into anything a run writes.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_secrets.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from r1helpers.core import secrets
from r1helpers.core.secrets import SECRETS, load_secrets, read_dotenv

ROOT = Path(__file__).resolve().parents[1]
# Fake tokens in the real shape, assembled here so that secret scanners do not flag the source.
HF = "hf_" + "FAKEtokenForLeakTest0123456789abcdEF"
HF_SHADOWED = "hf_" + "FAKEshadowedByTheEnvironment987654"
WANDB = "FAKEwandbKeyForLeakTest0123456789abcdef01"


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No secret in the environment, no .env in reach, no prompt; restored afterwards."""
    for name in [a for aliases in SECRETS.values() for a in aliases] + [secrets.DOTENV_ENV, "KAGGLE_KERNEL_RUN_TYPE"]:
        monkeypatch.setenv(name, "x")  # so that monkeypatch restores it, even after load_secrets sets it
        monkeypatch.delenv(name)
    monkeypatch.setenv("R1HELPERS_HEADLESS", "1")
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_found_in_the_environment_under_another_name(clean, capsys):
    clean.setenv("HUGGING_FACE_HUB_TOKEN", HF)
    report = load_secrets()
    assert os.environ["HF_TOKEN"] == HF and report.found == {"HF_TOKEN": "environment"}
    print(*report.lines(), sep="\n")
    out = capsys.readouterr().out
    assert "HF_TOKEN: found in environment" in out and HF not in out


def test_none_found_says_what_was_tried(clean):
    report = load_secrets()
    assert report.found == {} and "HF_TOKEN" not in os.environ
    hf, wandb = report.lines()
    assert hf.startswith("HF_TOKEN: not found") and wandb.startswith("WANDB_API_KEY: not found")
    for tried in ("environment variables", "Kaggle secrets (not a Kaggle kernel)", "Colab user data (not Colab)",
                  ".env file (no .env", secrets.DOTENV_ENV):
        assert tried in hf
    assert "offline" in wandb  # what being without it means


def test_dotenv_beside_or_above_the_working_folder(clean, tmp_path):
    (tmp_path / ".env").write_text(f'# secrets\nexport HF_TOKEN="{HF}"\nWANDB_KEY={WANDB}  # W&B\n')
    nested = tmp_path / "notebooks"
    nested.mkdir()
    clean.chdir(nested)  # notebooks run in notebooks/, the .env sits at the repository root
    report = load_secrets()
    assert report.found == {"HF_TOKEN": ".env file", "WANDB_API_KEY": ".env file"}
    assert os.environ["HF_TOKEN"] == HF and os.environ["WANDB_API_KEY"] == WANDB
    assert str(tmp_path / ".env") in report.tried[-1]


def test_explicit_dotenv_and_precedence(clean, tmp_path):
    env_file = tmp_path / "elsewhere" / "secrets.env"
    env_file.parent.mkdir()
    env_file.write_text(f"HF_TOKEN='{HF_SHADOWED}'\nWANDB_API_KEY={WANDB}\n")
    clean.setenv(secrets.DOTENV_ENV, str(env_file))
    clean.setenv("HF_TOKEN", HF)
    report = load_secrets()
    assert report.found == {"HF_TOKEN": "environment", "WANDB_API_KEY": ".env file"}
    assert os.environ["HF_TOKEN"] == HF  # the environment wins over a file


def test_read_dotenv_forms(tmp_path):
    f = tmp_path / ".env"
    f.write_text('A=1\nexport B = "two words" # note\nC=\'x#y\'\nD=plain # note\n#E=no\nnot a pair\n')
    assert read_dotenv(f) == {"A": "1", "B": "two words", "C": "x#y", "D": "plain"}


def test_kaggle_secrets(clean):
    asked = []

    class UserSecretsClient:
        def get_secret(self, label):
            asked.append(label)
            if label == "WANDB_API_KEY":
                return WANDB
            raise RuntimeError("secret not attached to this notebook")

    clean.setitem(sys.modules, "kaggle_secrets", types.SimpleNamespace(UserSecretsClient=UserSecretsClient))
    clean.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    report = load_secrets()
    assert report.found == {"WANDB_API_KEY": "Kaggle secrets"} and os.environ["WANDB_API_KEY"] == WANDB
    assert "HF_TOKEN" in asked and "HUGGING_FACE_HUB_TOKEN" in asked


def test_colab_user_data(clean):
    def get(label):
        if label == "HF_TOKEN":
            return HF
        raise KeyError(label)  # Colab's SecretNotFoundError

    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=get)
    clean.setitem(sys.modules, "google.colab", colab)
    report = load_secrets()
    assert report.found == {"HF_TOKEN": "Colab user data"} and os.environ["HF_TOKEN"] == HF


def test_prompt_only_when_someone_can_answer(clean):
    def never(prompt=""):
        raise AssertionError("prompted headless")

    clean.setattr("getpass.getpass", never)
    assert load_secrets().found == {}  # R1HELPERS_HEADLESS=1: papermill, Kaggle batch runs
    clean.delenv("R1HELPERS_HEADLESS")
    clean.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert load_secrets().found == {}
    clean.delenv("KAGGLE_KERNEL_RUN_TYPE")
    clean.setattr(sys, "stdin", None)
    assert load_secrets().found == {}

    answers = {"HF_TOKEN": HF, "WANDB_API_KEY": ""}
    clean.setattr("getpass.getpass", lambda prompt="": answers[prompt.split()[0]])
    report = load_secrets(ask=True)
    assert report.found == {"HF_TOKEN": "prompt"} and "a hidden prompt" in report.tried
    assert os.environ["HF_TOKEN"] == HF and "WANDB_API_KEY" not in os.environ


def test_prompt_refused_by_the_front_end_is_skipped(clean):
    def refuse(prompt=""):
        raise EOFError

    clean.setattr("getpass.getpass", refuse)
    assert load_secrets(ask=True).found == {}


def test_start_prints_and_saves_sources_only(clean, tmp_path, capsys):
    import r1helpers

    clean.setenv("HF_TOKEN", HF)
    clean.setenv("WANDB_API_KEY", WANDB)
    cfg, run = r1helpers.start(str(tmp_path / "run"), "cpu")
    out = capsys.readouterr().out
    assert "HF_TOKEN: found in environment" in out and "WANDB_API_KEY: found in environment" in out
    assert _leaks([run.root], out) == []


def _leaks(folders: list[Path], *texts: str, tokens: tuple[str, ...] = (HF, HF_SHADOWED, WANDB)) -> list[str]:
    """Files (read as bytes, any encoding) and texts holding a token, or its last 16 characters."""
    needles = {n.encode(enc) for t in tokens for n in (t, t[-16:]) for enc in ("utf-8", "utf-16-le")}
    found = [f"text {i}" for i, text in enumerate(texts) if any(n in text.encode() for n in needles)]
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink() and any(n in path.read_bytes() for n in needles):
                    found.append(str(path))
    return found


def test_leak_scan_finds_tokens_in_any_file(tmp_path):
    """The scan below can fail: binary files, UTF-16, hidden folders, a token cut to its tail."""
    run = tmp_path / "run" / "train" / "wandb" / "offline-run-x"
    run.mkdir(parents=True)
    (run / "run-x.wandb").write_bytes(b"\x00\x01" + WANDB.encode() + b"\xff")
    (run / ".hidden.log").write_bytes(("key=" + HF).encode("utf-16-le"))
    (run / "clean.json").write_text("{}")
    (run / "tail.txt").write_text("token ending ..." + HF_SHADOWED[-16:])
    assert sorted(Path(p).name for p in _leaks([tmp_path / "run"])) == [".hidden.log", "run-x.wandb", "tail.txt"]
    assert _leaks([], "printed " + WANDB) == ["text 0"] and _leaks([], "nothing") == []


# Where libraries write outside the run folder unless told otherwise; unset, they fall back to HOME.
REDIRECTED = ("IPYTHONDIR", "MPLCONFIGDIR", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE",
              "TMP", "TEMP", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")


@pytest.mark.slow
def test_headless_series_leaks_no_secret(tmp_path):
    """All six notebooks with a token in the environment and a key in a .env file (plus a second,
    shadowed token there): no file the run wrote, executed notebooks, W&B's offline run and what
    libraries write under HOME and TMPDIR (W&B's core logs, caches) included, and nothing it
    printed, holds any of them."""
    dotenv = tmp_path / "secrets.env"
    dotenv.write_text(f"HF_TOKEN={HF_SHADOWED}\nWANDB_API_KEY={WANDB}\n")
    run_dir, home = tmp_path / "run", tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "HF_TOKEN", *REDIRECTED)
           and not k.startswith(("WANDB_", "XDG_", "JUPYTER_"))}
    env.update({
        "HOME": str(home), "TMPDIR": str(home / "tmp"),
        "HF_HUB_OFFLINE": "1", "HF_TOKEN": HF, secrets.DOTENV_ENV: str(dotenv),
        # A key is set, so train.wandb=auto probes W&B; pointing it at a closed local port makes
        # "unreachable" certain here, so W&B runs offline (and writes its run folder) as it would
        # on a machine without internet.
        "WANDB_BASE_URL": "http://127.0.0.1:9",
    })
    proc = subprocess.run(
        [sys.executable, "-m", "r1helpers.pipeline", "--run-dir", str(run_dir), "--profile", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    setup = (run_dir / "notebooks" / "00_setup.ipynb").read_text()
    assert "HF_TOKEN: found in environment" in setup and "WANDB_API_KEY: found in .env file" in setup
    # The key was in the training kernel's environment while W&B wrote its offline run.
    training = (run_dir / "notebooks" / "03_lora_training.ipynb").read_text()
    assert "W&B offline (a key is set but W&B is unreachable" in training
    offline = list((run_dir / "train" / "wandb").glob("offline-run-*"))
    assert offline and any(p.is_file() for p in offline[0].rglob("*")), "W&B offline run written"
    assert len(list(run_dir.rglob("*"))) > 50
    assert any(p.is_file() for p in home.rglob("*")), "what the run writes outside the run folder lands in HOME"
    cache = [Path(os.environ["R1HELPERS_CACHE"])] if os.environ.get("R1HELPERS_CACHE") else []
    assert _leaks([run_dir, home, *cache], proc.stdout, proc.stderr) == []
