"""How long the multiple-choice scoring takes on a Kaggle T4, estimated from the card's specification.

Estimates, not measurements: a forward pass costs about 2 x parameters FLOPs a token, a decoding
step reads every weight once. The T4's specification (65 TFLOPS fp16 on tensor cores, 320 GB/s)
is derated for the 4-bit weights (bitsandbytes dequantises each matrix before its fp16 matmul):
prefill at PREFILL_TFLOPS effective, weight reads at DECODE_BANDWIDTH of the peak. With 16 rows
decoding together this gives about 15 tokens/s a sequence, the low end of what notebook 04 quotes
for the T4 (15-25). The sizes the seed recipe uses (compare.mcq_generate_rows,
compare.mcq_protocol_rows) come from `rows_for_budget` of a stated number of T4 minutes.
"""

from __future__ import annotations

import math

# Kaggle's T4 (NVIDIA's data sheet) and the 8B model in 4-bit
T4_FP16_TFLOPS = 65.0
T4_BANDWIDTH_GBS = 320.0
PREFILL_TFLOPS = 25.0          # effective, 4-bit weights dequantised per matmul: ~40% of the fp16 peak
DECODE_BANDWIDTH = 0.5         # share of the peak bandwidth a decoding step's weight reads reach
PARAMS_8B = 8.03e9
WEIGHTS_GB_4BIT = 5.7          # unsloth/DeepSeek-R1-Distill-Llama-8B in bitsandbytes 4-bit, embeddings 16-bit
KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (key, value) x fp16: 128 KiB
DECODE_ROWS = 16               # rows decoding together on a T4 (the KV cache of 16 x ~2,300 tokens fits beside the weights)

# Mean tokens of one question's likelihood scoring, per option sequence: the recipe's prompt (~105 tokens
# of preamble and request) + the question and its options + one option's text. From the sets' mean lengths
# in characters at ~4.2 characters a token: MedQA-USMLE vignettes ~1,050 characters, MedMCQA questions
# ~130, PubMedQA context + question ~1,250.
SCORED_TOKENS = {"GBaker/MedQA-USMLE-4-options": (360, 4), "openlifescienceai/medmcqa": (150, 4),
                 "qiaojin/PubMedQA": (420, 3)}


def prefill_seconds(tokens: float, params: float = PARAMS_8B) -> float:
    """Seconds for forward passes over `tokens` tokens (2 x params FLOPs each) at PREFILL_TFLOPS."""
    return 2 * params * tokens / (PREFILL_TFLOPS * 1e12)


def likelihood_seconds(questions: int, tokens_per_option: int, options: int, models: int = 2) -> float:
    """T4 seconds to score `questions` by option likelihood: each option is one sequence of prompt + option,
    scored once per model."""
    return prefill_seconds(questions * tokens_per_option * options * models)


def decode_tokens_per_second(rows: int = DECODE_ROWS, context: int = 1300) -> float:
    """Tokens a second over `rows` sequences decoding together at a mean `context` length: a step reads the
    weights once and each row's KV cache, and computes 2 x params FLOPs a row."""
    bw = T4_BANDWIDTH_GBS * 1e9 * DECODE_BANDWIDTH
    step = (WEIGHTS_GB_4BIT * 1e9 + rows * context * KV_BYTES_PER_TOKEN) / bw + rows * prefill_seconds(1)
    return rows / step


def generation_seconds(questions: int, max_new_tokens: int, models: int = 2, rows: int = DECODE_ROWS) -> float:
    """T4 seconds to answer `questions` by generation with both models, every answer at `max_new_tokens`
    (the worst case: an answer that stops early costs less)."""
    return questions * max_new_tokens * models / decode_tokens_per_second(rows, 300 + max_new_tokens // 2)


def rows_for_budget(minutes: float, max_new_tokens: int, models: int = 2, step: int = 10) -> int:
    """The most questions (a multiple of `step`) both models answer by generation in `minutes` of T4 time."""
    per_question = generation_seconds(1, max_new_tokens, models)
    return int(math.floor(minutes * 60 / per_question / step) * step)


def likelihood_minutes(source: str, questions: int) -> float | None:
    """T4 minutes to score `questions` of a known Hub set by option likelihood, both models; None if unknown."""
    hub_id = str(source).partition("@")[0].partition(":")[0]
    if hub_id not in SCORED_TOKENS:
        return None
    tokens, options = SCORED_TOKENS[hub_id]
    return likelihood_seconds(questions, tokens, options) / 60
