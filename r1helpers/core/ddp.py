"""Facts about this process under DDP (torchrun; launched by `r1helpers.distributed`) and the few calls that
differ; in a single process (rank 0 of a world of one) each is a no-op."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator, Mapping

from r1helpers.core.config import Config, per_process_accumulation

DDP_BACKEND_NOTE = ("under DDP this project trains with transformers + peft (bitsandbytes 4-bit on CUDA, one whole "
                    "model per GPU); Unsloth's open-source multi-GPU support is not relied on")
# Set by hardware.pin_first_gpu: the GPUs visible before it hid all but the first (for the DDP launcher).
GPUS_BEFORE_PIN_ENV = "R1HELPERS_GPUS_BEFORE_PIN"


def world_size(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("WORLD_SIZE") or 1)


def rank(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("RANK") or 0)


def is_main_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Rank 0, or no launcher at all: the one process that writes the run folder and logs."""
    return rank(environ) == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """Print from rank 0 only, so N processes do not print every line N times."""
    if is_main_process():
        print(*args, **kwargs)


def barrier() -> None:
    """Wait for every rank; nothing to wait for in a single process."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (and writes what it makes); the others then find it made."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def cuda_device() -> int:
    """The GPU this process trains on: its LOCAL_RANK under a launcher, else the current one (4-bit weights
    are placed there when they load; they cannot be moved afterwards)."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    import torch

    return torch.cuda.current_device()


def init_process_group() -> bool:
    """Join the launcher's process group (NCCL on CUDA, gloo on CPU) before the model loads, so that the steps
    before the Trainer have `barrier`; the Trainer uses the same group."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    if torch.cuda.is_available():
        torch.cuda.set_device(cuda_device())
        dist.init_process_group("nccl", device_id=torch.device("cuda", cuda_device()))
    else:
        _load_onto_indexed_cpu()
        dist.init_process_group("gloo")
    return True


def _load_onto_indexed_cpu() -> None:
    """Let torch.load take map_location="cpu:0", which the Trainer passes when it resumes under CPU DDP
    (torch.load alone fails: "don't know how to restore data location")."""
    import torch.serialization

    torch.serialization.register_package(
        99, lambda obj: None, lambda obj, location: obj if location.startswith("cpu:") else None)


def trainer_kwargs() -> dict[str, Any]:
    """TrainingArguments for DDP; none in a single process. Without CUDA accelerate needs use_cpu=True (else
    it trains N independent copies); every LoRA weight gets a gradient, so no search for unused parameters."""
    if world_size() <= 1:
        return {}
    import torch

    if torch.cuda.is_available():
        return {"ddp_backend": "nccl", "ddp_find_unused_parameters": False}
    return {"use_cpu": True, "ddp_backend": "gloo", "ddp_find_unused_parameters": False}


def per_process(cfg: Config, processes: int | None = None) -> Config:
    """`cfg` as one of `processes` DDP processes trains it: the accumulation divided among them."""
    processes = world_size() if processes is None else processes
    t = cfg.train
    acc = per_process_accumulation(t.per_device_train_batch_size, t.gradient_accumulation_steps, processes)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, gradient_accumulation_steps=acc, processes=1))


