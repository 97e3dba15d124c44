"""Compile one decoder layer and reuse its code for every layer of the decoding step.

On a GPU, transformers compiles the static cache's decoding step with `torch.compile` (about 50 s for the 8B
shape on the H200 when torch's compile cache is cold, BENCHMARKS.md). Dynamo then traces all 32 decoder layers
one after the other and inductor compiles the whole unrolled graph, although the layers are the same code on
weights of the same shapes. `torch.compiler.nested_compile_region` marks a function whose compiled code is reused
wherever it is called again under the same conditions, so the layer is traced and compiled once.

Measured on this project's 2-core CPU machine with inductor on the CPU (a 32-layer Llama of small dimensions with
a LoRA, grouped decoding attention, torch's compile caches off): the first compiled `generate` took 57.4 s
traced whole and 34.0 s with the layers marked. Dynamo captured 3,130 calls against 90, and the tokens were
the same as without compiling.

On the H200 (8B shape with a LoRA, 75 rows, grouped decoding, BENCHMARKS.md) the marks cut a cold compilation, but
not what a compile-cache hit still costs, and the step decodes slower. Dynamo still traces every layer:
- cold cache: warm-up 39.9 s against 59.8 (inductor 20.6 s against 40.0; tracing 13.0 against 13.3);
- from the cache, as stage 04 compiles: 17.7 s against 15.0 (tracing 11.5 against 10.0);
- decoding 3,850 tokens/s against 4,232.
So `infer.compile_layers_once` stays off by default.
Outside `torch.compile` the mark does nothing.

    from r1helpers.inference.regions import compile_layers_once
    compile_layers_once(model)             # before the first compiled generate
    compile_layers_once(model, on=False)   # back to the class's own forward
"""

from __future__ import annotations

import types
from typing import Any

_REGIONS: dict[type, Any] = {}  # decoder layer class -> its forward marked once, shared by every layer of it


def decoder_layers(model) -> list:
    """The decoder layers of a transformers causal LM (or of the model inside a peft wrapper); [] if none."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(inner, "model", None), "layers", None)
    return list(layers) if layers is not None else []


def compile_layers_once(model, on: bool = True) -> int:
    """Mark (`on`) each decoder layer's forward as one shared nested compile region, or take the mark off; returns
    how many layers are marked now."""
    import torch

    if on and not hasattr(torch.compiler, "nested_compile_region"):
        raise RuntimeError(f"infer.compile_layers_once needs torch.compiler.nested_compile_region, which torch "
                           f"{torch.__version__} does not have; set infer.compile_layers_once=false")
    marked = 0
    for layer in decoder_layers(model):
        if not on:
            layer.__dict__.pop("forward", None)
            continue
        cls = type(layer)
        if cls not in _REGIONS:
            _REGIONS[cls] = torch.compiler.nested_compile_region(cls.forward)
        layer.forward = types.MethodType(_REGIONS[cls], layer)
        marked += 1
    return marked
