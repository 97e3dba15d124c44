import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from r1helpers.core import hardware, kaggle_paths, secrets, show
from r1helpers.core.config import load_config
from r1helpers.core.hardware import (
    GPU, GPUS_SEEN_ENV, Hardware, choose_backend, environment_report, hardware_notes, package_versions,
    pin_first_gpu, resolve_dtype, smi_gpus, torch_has_kernels,
)

PACKAGE = Path(__file__).resolve().parents[1] / "r1helpers"

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
    monkeypatch.setattr("r1helpers.core.hardware.unsloth_importable", lambda: (False, "unsloth did not import (ImportError)"))
    choice = choose_backend(load_config("seed"), H100)
    assert choice.name == "transformers" and "did not import" in choice.reason


def test_report_records_versions(cpu_cfg):
    rep = environment_report(cpu_cfg)
    assert rep["versions"]["torch"] and rep["versions"]["transformers"] == package_versions()["transformers"]
    assert rep["backend"]["name"] == "transformers"


# ---------------------------------------------------------------- what a person on each machine is told


def notes(hw, overrides=None, kaggle=False):
    cfg = load_config("seed", overrides)
    return "\n".join(hardware_notes(cfg, hw, kaggle=kaggle))


def test_t4_trains_in_fp16():
    text = notes(T4)
    assert "no native bf16" in text and "fp16" in text and "GPUs seen" not in text


@pytest.mark.parametrize("hw", [T4x2, Hardware("cuda", [T4.gpus[0]], gpus_seen=2)], ids=["both-visible", "pinned"])
def test_t4x2_says_which_gpu_trains(hw):
    text = notes(hw)
    assert "2 GPUs seen; this notebook trains on GPU 0; train.processes=0 in notebook 03" in text
    assert "python -m r1helpers.distributed --nproc 2" in text
    assert choose_backend(load_config("seed"), hw, try_import=False, processes=1).name == "unsloth"


def test_ddp_trains_with_transformers_not_unsloth():
    choice = choose_backend(load_config("seed"), T4x2, try_import=False, processes=2)
    assert choice.name == "transformers" and choice.load_in_4bit and "Unsloth" in choice.reason
    with pytest.raises(RuntimeError, match="DDP"):
        choose_backend(load_config("seed", {"model.backend": "unsloth"}), T4x2, try_import=False, processes=2)


def test_p100_note_says_retired_no_kernels_and_t4x2():
    text = notes(P100, kaggle=True)
    assert "retired" in text and "NvidiaTeslaP100" in text and "run on a T4" in text
    assert "torch 2.10.0+cu128 has no sm_60 kernels" in text and "bitsandbytes 0.50.2's CUDA 12.8 library" in text
    assert "installs no GPU packages" in text and "Switch to T4 x2" in text and "'GPU T4 x2'" in text
    assert "retired" not in notes(T4) and "retired" not in notes(H100)


def test_h100_and_cpu():
    text = notes(H100)
    assert "native bf16" in text and "no native bf16" not in text
    assert "CPU profile" in notes(CPU) and "Accelerator" in notes(CPU, kaggle=True)


CU128 = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def test_p100_with_a_torch_that_dropped_sm60_says_what_to_do():
    hw = Hardware("cuda", P100.gpus, arch_list=CU128, torch_version="2.10.0+cu128")
    with pytest.raises(RuntimeError) as e:
        choose_backend(load_config("seed"), hw, try_import=False)
    msg = str(e.value)
    assert "sm_60" in msg and msg.index("Switch to T4 x2") < msg.index("pip install"), "T4 x2 first"
    assert "--index-url https://download.pytorch.org/whl/cu126" in msg
    # pip reinstalls only what the installed version does not satisfy: a bare torch==2.10.0 is satisfied by
    # 2.10.0+cu128 ("Requirement already satisfied"); the advised spec names the cu126 build itself.
    (spec,) = re.findall(r"pip install '(torch==[^']+)'", msg)
    assert spec == "torch==2.10.0+cu126"
    assert not Requirement(spec).specifier.contains("2.10.0+cu128")
    assert Requirement("torch==2.10.0").specifier.contains("2.10.0+cu128")
    assert "bitsandbytes==0.50.2" in msg
    ok = Hardware("cuda", P100.gpus, arch_list=CU126, torch_version="2.9.0+cu126")
    assert choose_backend(load_config("seed"), ok, try_import=False).name == "transformers"


@pytest.mark.parametrize("cap, arch, ok", [((7, 5), CU128, True), ((6, 0), CU128, False), ((6, 1), CU126, True),
                                           ((9, 0), ["sm_80", "compute_80"], True), ((7, 5), ["sm_80"], False),
                                           ((6, 0), [], True)])
def test_torch_kernels_by_architecture(cap, arch, ok):
    assert torch_has_kernels(cap, arch) is ok


def test_second_gpu_hidden_before_cuda_starts():
    gpus = T4x2.gpus
    environ = {}
    assert "2 GPUs seen" in pin_first_gpu(gpus, environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "0" and environ[GPUS_SEEN_ENV] == "2"
    assert environ["R1HELPERS_GPUS_BEFORE_PIN"] == "0,1", "kept for the DDP launcher"
    assert pin_first_gpu(gpus, {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}) is None, "DDP owns its GPUs"
    assert pin_first_gpu(gpus, {"CUDA_VISIBLE_DEVICES": "1"}) is None, "a single chosen GPU is kept"
    environ = {"CUDA_VISIBLE_DEVICES": "1,0"}
    pin_first_gpu(gpus, environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert pin_first_gpu(T4.gpus, {}) is None


def test_gpus_read_from_nvidia_smi_without_torch():
    out = "Tesla T4, 7.5, 15360\nTesla T4, 7.5, 15360\n"
    fake = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=out)  # noqa: E731
    assert smi_gpus(fake) == [GPU("Tesla T4", (7, 5), 15.0)] * 2

    def missing(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")

    assert smi_gpus(missing) == []


def test_report_carries_the_notes(cpu_cfg):
    assert environment_report(cpu_cfg)["notes"]


# ---------------------------------------------------------------- from torch's device properties to the decision

PROPS = {
    "T4": dict(name="Tesla T4", major=7, minor=5, total_memory=15_828_320_256),
    "P100": dict(name="Tesla P100-PCIE-16GB", major=6, minor=0, total_memory=17_071_734_784),
    "H100": dict(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=85_045_346_304),
}


@pytest.mark.parametrize("gpu, count, seen, backend, dtype, says", [
    ("T4", 1, "", "unsloth", "float16", "no native bf16"),
    ("T4", 1, "2", "unsloth", "float16", "2 GPUs seen; this notebook trains on GPU 0"),
    ("P100", 1, "", "transformers", "float16", "Kaggle has retired the P100"),
    ("H100", 1, "", "unsloth", "bfloat16", "native bf16, training in bf16"),
    (None, 0, "", "transformers", "float32", "no CUDA GPU: the seed recipe needs one"),
], ids=["T4", "T4x2-pinned", "P100", "H100", "CPU"])
def test_decision_from_injected_device_properties(monkeypatch, gpu, count, seen, backend, dtype, says):
    """detect_hardware reads torch.cuda as a Kaggle T4 / T4 x2 (second GPU hidden), P100, H100 or CPU shows it."""
    import types

    import torch

    from r1helpers.core.hardware import detect_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(**PROPS[gpu]))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CU126)
    monkeypatch.setenv(GPUS_SEEN_ENV, seen)
    hw = detect_hardware()
    cfg = load_config("seed")
    choice = choose_backend(cfg, hw, try_import=False, processes=1)
    assert (choice.name, choice.dtype, choice.load_in_4bit) == (backend, dtype, count > 0)
    assert says in "\n".join(hardware_notes(cfg, hw))
    if gpu == "P100":  # the same P100 under a torch built without sm_60 kernels
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CU128)
        with pytest.raises(RuntimeError, match="no CUDA kernels for Tesla P100"):
            choose_backend(cfg, detect_hardware(), try_import=False, processes=1)


# ---------------------------------------------------------------- one home for the small shared helpers


def _sources():
    return {p.relative_to(PACKAGE.parent).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_on_kaggle_has_one_source(monkeypatch, cpu_cfg):
    """Every "am I on Kaggle?" is kaggle_paths.on_kaggle: the environment report, secrets and setup agree."""
    from r1helpers import kaggle

    assert hardware.on_kaggle is secrets.on_kaggle is kaggle.on_kaggle is kaggle_paths.on_kaggle
    checks = {path for path, text in _sources().items() if re.search(r"KAGGLE_KERNEL_RUN_TYPE\"\s+(not\s+)?in\b", text)
              or re.search(r"def\s+_?(on|is)_kaggle\b", text)}
    assert checks == {"r1helpers/core/kaggle_paths.py"}
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert environment_report(cpu_cfg, try_import=False)["kaggle"] is True
    assert "Kaggle secrets (not a Kaggle kernel)" not in "".join(label for _, label, _ in secrets._sources([]))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert environment_report(cpu_cfg, try_import=False)["kaggle"] is False
    assert kaggle_paths.on_kaggle({}) is False and kaggle_paths.on_kaggle({"KAGGLE_KERNEL_RUN_TYPE": "Batch"})


def test_headless_cut_and_free_memory_live_in_core():
    sources = _sources()
    assert {p for p, t in sources.items() if re.search(r"get\(\s*[\"']R1HELPERS_HEADLESS", t)} == set(), \
        "read it through core.hardware.headless()"
    assert {p for p, t in sources.items() if re.search(r"def\s+_?cut\(", t)} == {"r1helpers/core/show.py"}
    assert {p for p, t in sources.items() if "empty_cache()" in t} == {"r1helpers/core/hardware.py"}
    from r1helpers.core.hardware import headless

    assert headless({"R1HELPERS_HEADLESS": "1"}) and not headless({})
    assert show.cut(None, 3) == "" and show.cut("abc", 3) == "abc" and show.cut("abcdef", 3) == "abc…"


def test_free_memory_empties_the_cuda_cache_only_where_torch_is_loaded(monkeypatch):
    import torch

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    hardware.free_memory()
    assert emptied == [1]
    monkeypatch.delitem(sys.modules, "torch")
    hardware.free_memory()  # a process without torch: only garbage collection
    assert emptied == [1]
