"""The one prompt of training, inference and export: the inference prompt is the exact prefix of the training
text, as a string and as token ids (`encode_example`)."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context.\n"
    "Write a response that appropriately completes the request.\n"
    "Before answering, think carefully about the question and create a step-by-step chain of thoughts "
    "to ensure a logical and accurate response."
)
INSTRUCTION = (
    "You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment planning.\n"
    "Please answer the following medical question."
)


def build_prompt(question: str) -> str:
    """Everything up to and including the opening <think>: what the model sees at inference."""
    return (
        f"{PREAMBLE}\n\n### Instruction:\n{INSTRUCTION}\n\n### Question:\n{question.strip()}\n\n"
        f"### Response:\n{THINK_OPEN}"
    )


def build_completion(cot: str, response: str) -> str:
    """What follows the prompt in a training example (without EOS, which is a token, not text)."""
    return f"\n{cot.strip()}\n{THINK_CLOSE}\n{response.strip()}"


def build_training_text(question: str, cot: str, response: str, eos_token: str) -> str:
    return build_prompt(question) + build_completion(cot, response) + eos_token


def encode_example(tokenizer, question: str, cot: str, response: str) -> tuple[list[int], int]:
    """Token ids of one training example and the length of its prompt part: prompt and completion tokenized
    apart (so the prompt's ids are a prefix whatever the merges), EOS appended as an id."""
    prompt_ids = tokenizer(build_prompt(question), add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(build_completion(cot, response), add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids + [tokenizer.eos_token_id], len(prompt_ids)


def encode_prompt(tokenizer, question: str) -> list[int]:
    return tokenizer(build_prompt(question), add_special_tokens=True)["input_ids"]


@dataclass
class ParsedOutput:
    reasoning: str
    answer: str
    think_closed: bool


def split_output(generated: str) -> ParsedOutput:
    """Split generated text (what follows the prompt's <think>) into reasoning and answer; a repeated opening
    tag is dropped, and without a closing tag all of it is reasoning and the answer is empty."""
    text = generated
    if text.lstrip().startswith(THINK_OPEN):
        text = text.lstrip()[len(THINK_OPEN):]
    reasoning, closed, answer = text.partition(THINK_CLOSE)
    return ParsedOutput(reasoning=reasoning.strip(), answer=answer.strip(), think_closed=bool(closed))


def adds_bos(tokenizer) -> bool:
    """Whether `tokenizer(text)` starts the ids with BOS (Llama-3 and the R1 distills: yes; SmolLM2: no), and so
    whether the chat template must start with `{{ bos_token }}`."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("hi", add_special_tokens=True)["input_ids"]
    without = tokenizer("hi", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == bos


def chat_template(bos: bool = True) -> str:
    """A Jinja chat template that renders exactly `build_prompt` for one user turn, and the training text for a
    user + assistant pair; exports ship it (the R1 distill's own strips reasoning from assistant turns).

    `bos`: start with `{{ bos_token }}`, for a tokenizer that adds BOS to the training text (`adds_bos`).
    """
    return (
        ("{{ bos_token }}" if bos else "")
        + "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        + "{{ '"
        + PREAMBLE.replace("\n", "\\n").replace("'", "\\'")
        + "\\n\\n### Instruction:\\n"
        + INSTRUCTION.replace("\n", "\\n").replace("'", "\\'")
        + "\\n\\n### Question:\\n' + message['content'] | trim + '\\n\\n### Response:\\n"
        + THINK_OPEN
        + "' }}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{ '\\n' + message['content'] | trim + eos_token }}"
        "{%- endif %}"
        "{%- endfor %}"
    )


def template_for(tokenizer) -> str:
    """The chat template matching how this tokenizer encodes the training prompt (with BOS or without)."""
    return chat_template(bos=adds_bos(tokenizer))


# The template for tokenizers that add BOS (the seed recipe's R1 distill and the tiny model).
CHAT_TEMPLATE = chat_template(bos=True)
