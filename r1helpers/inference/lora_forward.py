"""Each LoRA layer's forward as one plain function of its weights while a compiled decoding step is traced.

On the static-cache path transformers compiles the decoding step with `torch.compile`, and every process that
generates traces it again with Dynamo, even when torch's compile cache then serves the compiled code. On the
H200 (8B shape, 75 rows, stage 04, BENCHMARKS.md) that tracing took 11.4 s of a 17.8 s warm-up. The step runs
224 LoRA layers (7 projections x 32 layers); peft's `lora.Linear.forward` checks adapter names, merges, variants
and dtypes in Python on every call, and Dynamo traces all of it in each of them.

`plain_lora_forward(model)` gives each peft LoRA layer that computes plain LoRA (one active adapter, no dropout,
no DoRA or other variant, not merged, an `nn.Linear` under it) the same arithmetic without those checks:

    result = linear(x, W, b) + linear(linear(x, A), B) * scale     # x cast to A's type first, as peft does

in the same order as peft's code, so the outputs are equal bit for bit (`tests/test_generation_paths.py`). Any
other layer keeps peft's forward. The layers get peft's forward back when the block ends; so peft's
`disable_adapter()`, which the comparison's scoring uses for the base model, works as before outside it.

Measured on this project's 2-core CPU machine (a 32-layer Llama of small dimensions with a LoRA on all seven
projections, Dynamo only, `backend="eager"`, three alternating runs each): compiling the static cache's decoding
step took 8.0-8.5 s this way against 12.5-12.7 s through peft's forward (tracing 7.1-7.6 s against 10.4-10.5,
building guards 0.50 against 1.14-1.23), the same tokens. The graph holds the same operations either way. Not yet
measured on the GPU.

    from r1helpers.inference.lora_forward import plain_lora_forward
    with plain_lora_forward(model) as layers:   # how many layers run the plain function
        out = model.generate(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def _plain(layer) -> Callable[..., Any] | None:
    """The plain forward of one peft LoRA layer, or None where it computes anything but plain LoRA."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    active = list(getattr(layer, "active_adapters", []))
    if len(active) != 1 or getattr(layer, "merged", True) or getattr(layer, "disable_adapters", True):
        return None
    name = active[0]
    base = getattr(layer, "base_layer", None)
    if type(base) is not torch.nn.Linear or name not in getattr(layer, "lora_A", {}):
        return None
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name, False):
        return None
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    a, b = layer.lora_A[name], layer.lora_B[name]
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear or a.bias is not None or b.bias is not None:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ or hasattr(m, "_hf_hook")
           for m in (base, a, b)):  # hooked (accelerate's offloading, say): peft's forward runs the hooks
        return None
    cast = getattr(layer, "cast_input_dtype_enabled", True)
    key = (id(base.weight), id(base.bias), id(a.weight), id(b.weight), layer.scaling[name], cast)
    kept = layer.__dict__.get("_plain_lora_forward")
    if kept is not None and kept[0] == key:
        return kept[1]  # the same function as last time: a compiled step's guards on it still hold

    # The weights are bound as defaults: Dynamo reads them without going through the modules, and still treats
    # them as parameters (static inputs of the CUDA graphs).
    def forward(x, *args, _w=base.weight, _bias=base.bias, _a=a.weight, _b=b.weight, _scale=layer.scaling[name],
                _cast=cast, **kwargs):
        result = F.linear(x, _w, _bias)
        if _cast and x.dtype != _a.dtype:
            x = x.to(_a.dtype)
        return (result + F.linear(F.linear(x, _a), _b) * _scale).to(result.dtype)

    layer.__dict__["_plain_lora_forward"] = (key, forward)
    return forward


@contextlib.contextmanager
def plain_lora_forward(model, on: bool = True) -> Iterator[int]:
    """Within the block, each plain LoRA layer of `model` runs `_plain`'s function instead of peft's forward
    (`on=False`: nothing changes); yields how many layers do. peft's forward is back afterwards."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        LoraLinear = None  # noqa: N806
    switched = []
    if on and LoraLinear is not None:
        for layer in model.modules():
            if isinstance(layer, LoraLinear) and "forward" not in layer.__dict__:
                forward = _plain(layer)
                if forward is not None:
                    layer.forward = forward
                    switched.append(layer)
    try:
        yield len(switched)
    finally:
        for layer in switched:
            layer.__dict__.pop("forward", None)
