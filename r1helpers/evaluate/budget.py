"""How long the multiple-choice scoring takes on a Kaggle T4: estimates from the card's specification, not measurements.

A forward pass costs 2 x parameters FLOPs a token (prefill at PREFILL_TFLOPS effective); a decoding step reads
every weight once (at DECODE_BANDWIDTH of the peak). 16 rows decoding together make about 15 tokens/s a sequence,
the low end of the 15-25 quoted for the T4. The seed recipe's sizes come from `rows_for_budget`.
"""

from __future__ import annotations

import math

T4_BANDWIDTH_GBS = 320.0
PREFILL_TFLOPS = 25.0          # ~40% of the T4's 65 fp16 TFLOPS: 4-bit weights are dequantised per matmul
DECODE_BANDWIDTH = 0.5
PARAMS_8B = 8.03e9
WEIGHTS_GB_4BIT = 5.7          # unsloth/DeepSeek-R1-Distill-Llama-8B in bitsandbytes 4-bit, embeddings 16-bit
KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (key, value) x fp16: 128 KiB
DECODE_ROWS = 16
# Mean tokens of one scored option sequence (prompt + question + one option) and the options per question,
# from the sets' mean lengths at ~4.2 characters a token.
SCORED_TOKENS = {"GBaker/MedQA-USMLE-4-options": (360, 4), "openlifescienceai/medmcqa": (150, 4),
                 "qiaojin/PubMedQA": (420, 3)}


def prefill_seconds(tokens: float, params: float = PARAMS_8B) -> float:
    """Seconds for forward passes over `tokens` tokens at PREFILL_TFLOPS."""
    return 2 * params * tokens / (PREFILL_TFLOPS * 1e12)


def decode_tokens_per_second(rows: int = DECODE_ROWS, context: int = 1300) -> float:
    """Tokens a second over `rows` sequences decoding together at a mean `context` length."""
    step = (WEIGHTS_GB_4BIT * 1e9 + rows * context * KV_BYTES_PER_TOKEN) / (T4_BANDWIDTH_GBS * 1e9 * DECODE_BANDWIDTH)
    return rows / (step + rows * prefill_seconds(1))


def generation_seconds(questions: int, max_new_tokens: int, models: int = 2, rows: int = DECODE_ROWS) -> float:
    """T4 seconds to answer `questions` by generation with both models, every answer at its token limit."""
    return questions * max_new_tokens * models / decode_tokens_per_second(rows, 300 + max_new_tokens // 2)


def rows_for_budget(minutes: float, max_new_tokens: int, models: int = 2, step: int = 10) -> int:
    """The most questions (a multiple of `step`) both models answer by generation in `minutes` of T4 time."""
    return int(math.floor(minutes * 60 / generation_seconds(1, max_new_tokens, models) / step) * step)


def likelihood_minutes(source: str, questions: int) -> float | None:
    """T4 minutes to score `questions` of a known Hub set by option likelihood, both models; None if unknown."""
    tokens, options = SCORED_TOKENS.get(str(source).partition("@")[0].partition(":")[0], (None, None))
    return None if tokens is None else prefill_seconds(questions * tokens * options * 2) / 60
