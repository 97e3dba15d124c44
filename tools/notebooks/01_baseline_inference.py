"""Chapter source of notebooks/01_baseline_inference.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 01 · Baseline inference: the base model, before any training

Before fine-tuning, we ask the base model the recipe's example question and the first held-out questions, with
exactly the prompt and the decoding settings the fine-tuned model will get in notebook 04. That gives the
"before" half of the comparison, and it shows what the prompt looks like and how a reasoning model's output is read.

**Needs:** the held-out split from notebook 02; if the run folder does not have it yet (this notebook runs before
02 in the pipeline), it is built here with the same code. Also the multiple-choice set of notebook 04
(`compare.mcq_source`), whose questions the base model answers here too. **Writes:** `baseline/generations.jsonl`
(one record per question: the text, its reasoning and answer, whether it finished), `baseline/mcq_generations.jsonl`
(the multiple-choice answers), `baseline/manifest.json` (settings, speed) and `results/01.json`. **Time on a Kaggle
T4** (estimates): about 2 minutes to load the 8B model in 4-bit (plus the download of about 6 GB the first time),
then the example question alone (a minute or two), then the batched generation: a T4's memory bandwidth (320 GB/s)
reads the 8B model's ~5.7 GB of 4-bit weights at most ~55 times a second, so each batch decodes at most ~55
steps/s whatever its size, and a batch whose answers run to the 1,200-token limit takes roughly 30-60 s; 10 to 20
minutes in all with the 50 multiple-choice questions. Measured on an H200 with the 8B shape and random weights
(not a T4; BENCHMARKS.md has the breakdown): 133.5 s for the stage."""),
    ("md", """## The prompt

One function, `prompts.build_prompt(question)`, builds the text the model sees, in training and at inference. Here
is the exact prompt for the example question:"""),
    ("code", """from r1helpers.core import prompts, show
question = cfg.infer.example_questions[0]  # the seed recipe's example question
prompt = prompts.build_prompt(question)
print(prompt)"""),
    ("md", """Its parts:

- **Preamble** (`prompts.PREAMBLE`): the Alpaca-style opening *"Below is an instruction that describes a task..."*,
  which also asks the model to think step by step before answering.
- **`### Instruction:`** (`prompts.INSTRUCTION`): the role, *a medical expert with advanced knowledge in clinical
  reasoning, diagnostics, and treatment planning*, and the task, answering the question.
- **`### Question:`**: the question itself, stripped of surrounding white space.
- **`### Response:` then `<think>`**: DeepSeek-R1 distilled models write their reasoning between `<think>` and
  `</think>` and the answer after it. The prompt opens the tag, so the model's first tokens are reasoning.

A training example (notebook 02) is this prompt followed by the reference reasoning, `</think>`, the answer and the
end-of-sequence token (EOS). The tutorial this series follows used one template to train and another to generate;
here the same function builds both, so the inference prompt is, token for token, the beginning of every training
example (`tests/test_prompts.py` checks this). The tokenizer adds the begin-of-sequence token (BOS) in front; it is
not part of the text."""),
    ("md", """## Loading the base model

First, how to generate. `choose.generation_path(cfg, run, "baseline")` picks the generation path for this notebook
and for notebook 04 (`infer.path`; `auto` follows the training backend, and says why):

- `unsloth`: the 4-bit weights through Unsloth's inference path (`FastLanguageModel.for_inference`): the choice
  on a T4.
- `dynamic`: plain transformers generation with the dynamic KV cache, on a CPU or where Unsloth is not available.

Both models of the comparison use one path, with the same weights and cache, chosen the same way in both
notebooks. `from_pretrained` then loads the model with arguments taken from that path:

- `model_name`: the Hub id or a local folder (`model.name`);
- `max_seq_length`: the longest sequence Unsloth prepares the model for (`model.max_seq_length`); the transformers
  path does not need it at load time. In training it is the longest example allowed (notebook 02);
- `load_in_4bit`: store the weights in 4-bit nf4 with bitsandbytes (QLoRA), about 5.5 GB instead of 16 GB for the
  8B model; CUDA only;
- `dtype`: bf16 or fp16 on a GPU, float32 on a CPU."""),
    ("code", """import torch
from r1helpers.inference import choose
from r1helpers.modeling.fast import language_model
from r1helpers.modeling.load import Loaded, prepare_tokens
from r1helpers.modeling.local import resolve_model_path
from r1helpers.workflow import data_stage, generate_stage
gen_path = choose.generation_path(cfg, run, "baseline")  # infer.path: how both models generate, and why
print(f"generation path {gen_path.path}: {gen_path.reason}")"""),
    ("md", """Then the tutorial's loading call. `language_model(backend)` is Unsloth's `FastLanguageModel` where Unsloth
runs; elsewhere (a CPU, or the `dynamic` path) it is a small class with the
same calls on transformers + peft (`r1helpers/modeling/fast.py`), so this cell reads the same everywhere.
`prepare_tokens` sets a pad token distinct from EOS (notebook 02 says why), left padding for batches, and the pad
and EOS ids in the generation config; `for_inference` switches to evaluation with the KV cache on (with Unsloth,
its faster generation path). The model is loaded once in this notebook and passed on to every generation below."""),
    ("code", """FastLanguageModel = language_model(gen_path.backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=resolve_model_path(cfg.model.name),  # a Hub id, or the folder of a local model
    max_seq_length=cfg.model.max_seq_length,
    dtype=getattr(torch, gen_path.dtype),
    load_in_4bit=gen_path.load_in_4bit,
    revision=cfg.model.revision,
)
print(prepare_tokens(model, tokenizer, cfg.model.pad_token))
FastLanguageModel.for_inference(model)
print(f"{gen_path.backend}; weights {gen_path.weights}; on {model.device}")"""),
    ("md", """## The example question, as the tutorial asks it

The prompt as token ids (the tokenizer adds BOS in front; in the R1 tokenizer `<think>` is one token of its own),
then `model.generate` with the decoding settings of `cfg.infer`, and the new tokens decoded. Notebook 04 asks the
fine-tuned model with the same call. This is one question at a time, as the tutorial does it: on a T4 the
answer's up to `max_new_tokens` tokens take a minute or two (an estimate); the batched call below is how the
series answers many questions."""),
    ("code", """i = cfg.infer  # the decoding settings of both generation notebooks
prompt_ids = prompts.encode_prompt(tokenizer, question)
print(len(prompt_ids), "prompt tokens; the last:", tokenizer.convert_ids_to_tokens(prompt_ids[-6:]))
input_ids = torch.tensor([prompt_ids], device=model.device)
outputs = model.generate(
    input_ids=input_ids,
    attention_mask=torch.ones_like(input_ids),
    max_new_tokens=i.max_new_tokens,
    do_sample=i.do_sample,
    temperature=i.temperature if i.do_sample else None,
    top_p=i.top_p if i.do_sample else None,
    use_cache=True,
)
print(tokenizer.decode(outputs[0, len(prompt_ids):], skip_special_tokens=True))"""),
    ("md", """## Generating the answers

`inference.generate.generate(model, tokenizer, questions, ...)` builds each prompt, generates, and splits each
output into reasoning and answer. The decoding settings come from `cfg.infer`, printed below; notebook 04 uses the
same ones:

- `max_new_tokens` (1,200 in the recipe): the most tokens generated per answer. A sequence stops earlier only when
  it produces EOS.
- `do_sample=False`: greedy decoding, the most likely token each step. It makes the baseline and fine-tuned runs
  repeatable and comparable. `temperature` and `top_p` apply only when `do_sample=True` (DeepSeek suggests 0.6 and
  0.95 for sampling); `seed` fixes the sampling.
- `batch_size`: how many questions are generated together (0, the default: as many as the GPU's free memory holds,
  planned from the KV cache each row needs at the longest prompt plus `max_new_tokens`; 8 on a CPU). Prompts are
  padded on the left to a common length, so that every row's next token comes at the same position.
- `stream`: prints an answer as it is generated, when one question is asked alone (never in a headless run)."""),
    ("code", """print(f"max_new_tokens={i.max_new_tokens} do_sample={i.do_sample} temperature={i.temperature} top_p={i.top_p} "
      f"seed={i.seed} batch_size={i.batch_size} (0: planned from the GPU's memory) stream={i.stream}")"""),
    ("md", """`generate_stage.baseline(cfg, run, prepared, loaded=...)` calls `generate` once for every question of this
notebook: the recipe's example question(s), the first `infer.num_eval_questions` held-out questions, which training
never sees, and, with `compare.mcq_generate` on (the default), notebook 04's multiple-choice questions
(`compare.mcq_source`, the first `compare.mcq_rows`). One large batch keeps the GPU busy (the example question is
answered again there, so that both models' records come from one batched call). To ask a question of your own, outside the run folder:

```python
from r1helpers.inference.generate import generate
mine = generate(model, tokenizer, ["A 45-year-old man presents with ..."],
                max_new_tokens=i.max_new_tokens, do_sample=i.do_sample, stream=True)[0]
```

Right before generating on Unsloth's path (a T4), both generation stages turn on Unsloth's CUDA-graph decoding
with the KV cache sized once for the longest prompt + `max_new_tokens` (`infer.unsloth_decode_graphs`,
`choose.set_up_decoding`). Unsloth's own `generate` keeps this for its RL trainers; otherwise it decodes eagerly
and grows the cache 512 positions at a time. After generating, the stage frees the cache Unsloth leaves on the
model's layers. The manifest records the path and the decoding, and notebook 04 checks that the fine-tuned model
decoded the same way.

It prints the path and the batch plan: with `infer.batch_size=0` the batch is the largest whose KV cache fits the
GPU memory left after the weights (`inference.plan.plan_generation`), questions sorted by prompt length, longest
first. A row that has finished still rides along, decoding padding, until every row of its batch has finished or
reached `max_new_tokens` (the batch stops as soon as all rows have produced EOS); sorting keeps rows of similar
length together. When the run folder already holds generations made with the same model, data and
`infer` settings, it reuses them instead, and the model passed in is not used. The held-out split comes from
`data_stage.prepare`, which reuses notebook 02's output or builds it with the tokenizer already loaded.

The answers go to `baseline/generations.jsonl` (the example and held-out questions) and
`baseline/mcq_generations.jsonl` (the multiple-choice ones, which notebook 04 grades against the fine-tuned
model's); notebook 04's `finetuned/generations.jsonl` holds the same question set."""),
    ("code", """prepared = data_stage.prepare(cfg, run, tokenizer=tokenizer)  # notebook 02's splits (built here if missing)
baseline = generate_stage.baseline(cfg, run, prepared, loaded=Loaded(model, tokenizer, gen_path.backend_choice()))  # reuses or writes baseline/generations.jsonl
show.generations_table(baseline)"""),
    ("md", """## Reasoning and answer

The example question's record (the first of `baseline`). `prompts.split_output` reads what followed the prompt's
`<think>`: the text up to the first `</think>` is the reasoning, the text after it is the answer. A repeated
`<think>` at the start is dropped."""),
    ("code", """example = baseline[0]  # the recipe's example question (a held-out one if infer.example_questions is empty)
parsed = prompts.split_output(example["generated"])
print("QUESTION:\\n" + example["question"])
print("\\nREASONING:\\n" + parsed.reasoning)
print("\\nANSWER:\\n" + (parsed.answer or "(none: no </think> came, so all of the text counts as reasoning)"))
print(f"\\n</think> closed: {parsed.think_closed} | EOS reached: {example['finished']} | "
      f"new tokens: {example['new_tokens']} of at most {i.max_new_tokens}")"""),
    ("md", """Two things can go wrong, and both are recorded rather than hidden:

- **`</think>` never comes.** A base model (or, in the `cpu` profile, a tiny model with random weights that produces
  noise) may reason until the limit without closing the tag. Then the answer is empty and the whole text counts as
  reasoning: the model never finished thinking. `think_closed` is `False`.
- **Cut at the limit.** When a sequence reaches `max_new_tokens` before it produces EOS, generation stops there,
  mid-sentence. `finished` is `False`: the text is not the model's full answer, only its first `max_new_tokens`
  tokens. R1 models can reason for more than 1,200 tokens on a hard question, so some base-model answers may be
  cut; raising `infer.max_new_tokens` lets them finish, at a cost in time roughly in proportion.

Notebook 04 reports these shares for both models, because a mean over answers that were cut says less than it seems."""),
    ("md", """## Results

How the base model's answers ended: how many questions, the share that closed `</think>`, the share that reached EOS
(the rest were cut at `max_new_tokens`), the mean number of new tokens, the speed over the whole stage (new
tokens per second of generation, all batches together), that speed taken apart (`speed`: the warm-up and the
decoding steps' own tokens per second), and the generation plan the
manifest recorded: path, batch and peak GPU memory reserved. Written to `results/01.json`."""),
    ("code", """from r1helpers.inference.generate import speed, summarize
manifest = run.read_manifest("baseline")
show.record_results(run, "01", {**summarize(baseline), "tokens per second": manifest["tokens_per_second"],
                                **speed(manifest["generation"]["stats"]),
                                "generation path": manifest.get("generation_path"), "batch": manifest.get("batch_size"),
                                "peak GPU GiB reserved": manifest.get("peak_gpu_reserved_gib")})"""),
]
