import pytest

from r1helpers.config import load_config
from r1helpers.env import GPU, Hardware, choose_backend, environment_report, package_versions, resolve_dtype

T4 = Hardware("cuda", [GPU("Tesla T4", (7, 5), 14.7)])
T4x2 = Hardware("cuda", [GPU("Tesla T4", (7, 5), 14.7)] * 2)
P100 = Hardware("cuda", [GPU("Tesla P100-PCIE-16GB", (6, 0), 15.9)])
H100 = Hardware("cuda", [GPU("NVIDIA H100 80GB HBM3", (9, 0), 79.1)])
CPU = Hardware("cpu")


@pytest.mark.parametrize("hw, bf16, dtype", [(T4, False, "float16"), (P100, False, "float16"),
                                             (H100, True, "bfloat16"), (CPU, False, "float32")])
def test_bf16_from_compute_capability(hw, bf16, dtype):
    assert hw.bf16 is bf16
    assert resolve_dtype("auto", hw) == dtype


def test_bf16_refused_on_t4():
    with pytest.raises(ValueError, match="no native bf16"):
        resolve_dtype("bfloat16", T4)


def test_backend_per_gpu():
    seed = load_config("seed")
    assert choose_backend(seed, H100, try_import=False).name == "unsloth"
    assert choose_backend(seed, T4, try_import=False).name == "unsloth"
    p100 = choose_backend(seed, P100, try_import=False)
    assert p100.name == "transformers" and "6.0" in p100.reason and p100.load_in_4bit
    cpu = choose_backend(seed, CPU, try_import=False)
    assert cpu.name == "transformers" and not cpu.load_in_4bit and cpu.dtype == "float32"
    with pytest.raises(RuntimeError, match="P100"):
        choose_backend(load_config("seed", {"model.backend": "unsloth"}), P100, try_import=False)


def test_unsloth_import_failure_falls_back(monkeypatch):
    monkeypatch.setattr("r1helpers.env.unsloth_importable", lambda: (False, "unsloth did not import (ImportError)"))
    choice = choose_backend(load_config("seed"), H100)
    assert choice.name == "transformers" and "did not import" in choice.reason


def test_report_records_versions(cpu_cfg):
    rep = environment_report(cpu_cfg)
    assert rep["versions"]["torch"] and rep["versions"]["transformers"] == package_versions()["transformers"]
    assert rep["backend"]["name"] == "transformers"
