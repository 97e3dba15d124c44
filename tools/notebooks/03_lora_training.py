"""Chapter source of notebooks/03_lora_training.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 03 · LoRA training

This chapter fine-tunes the base model on the prepared training rows. The base model's weights stay frozen;
LoRA adds small trainable matrices next to the attention and MLP layers, and TRL's `SFTTrainer` trains only
those, with the recipe's hyperparameters: effective batch 8 (2 rows x 4 accumulation steps), 60 optimizer steps,
learning rate 2e-4 with 5 warm-up steps and a linear decay, 8-bit AdamW, weight decay 0.01, seed 3407.

**Needs**: the prepared splits of notebook 02 (`data/dataset` in the run folder). Opened alone, this notebook
rebuilds them first.

**Writes** to the run folder: `train/adapter/` (the LoRA weights and the tokenizer, what notebooks 04 and 05
load), `train/checkpoints/` (every `train.save_steps` steps, the last two kept, for resuming),
`train/log_history.json` (every logged loss), `train/metrics.json` (the batch plan, the LoRA settings and the
exact `SFTConfig` arguments used, parameter counts, timings), `train/manifest.json` (the settings it was made
with), `train/wandb/` (the W&B run) and `results/03.json`.

**How long**, on a Kaggle T4 (estimates, not measured on a T4): loading the 8B model in 4-bit takes about 2
minutes; 60 steps of 8 rows of ~750 tokens are ~360,000 tokens, and at ~6 x 8 billion floating-point operations a
token (forward and backward, plus a third more for gradient checkpointing's recomputation) that is ~2.3 x 10^16
operations: 25-45 minutes at 10-15 of the T4's 65 fp16 TFLOP/s, what 4-bit training typically reaches. With the
`cpu` profile (tiny model, sample data) the 24 steps take about a minute. If the run folder already holds an
adapter trained with these settings, this notebook reuses it in seconds. Measured on an H200 with the 8B shape and
random weights (not a T4; BENCHMARKS.md): 117.1 s for the stage."""),
    ("code", """import torch
from transformers import AutoConfig
from trl import SFTConfig, SFTTrainer

from r1helpers import distributed
from r1helpers.core import show
from r1helpers.modeling.fast import language_model
from r1helpers.modeling.load import expected_lora_parameters, prepare_tokens
from r1helpers.modeling.local import resolve_model_path
from r1helpers.training.plan import token_budget_env
from r1helpers.workflow import data_stage, train_stage"""),
    ("md", """## Changing a value

`cfg` is a tree of dataclasses: `cfg.model`, `cfg.data`, `cfg.lora`, `cfg.train`, ... Assign a field in the next
cell (remove the `#`) and every later cell uses it: the tables below are read from `cfg`, and the training
runner receives the same `cfg` and checks it again before it starts, so a bad value (say `cfg.lora.r = 0`)
fails with a message naming the field, before any model loads.

A value assigned here lives only in this notebook's kernel. The run folder's `config.yaml` keeps what
`r1helpers.start` resolved, and notebook 04 opened later starts from that: it would find an adapter made with
other settings and train again with its own. For a change every notebook should see, pass it as papermill
`overrides` (in the parameters cell above: `overrides = {"train.max_steps": 30}`) or on the command line
(`python -m r1helpers.pipeline --set train.max_steps=30`)."""),
    ("code", """# cfg.train.max_steps = 30        # fewer optimizer steps
# cfg.lora.r = 8                   # a smaller adapter
# cfg.train.learning_rate = 1e-4
show.config_table(cfg).loc[["train.max_steps", "lora.r", "lora.alpha", "train.learning_rate"]]"""),
    ("md", """## The training rows

Stage 02 tokenized each row as the prompt (preamble, instruction, question, `### Response:` and `<think>`)
followed by the reasoning, `</think>`, the answer and EOS. `data_stage.prepare` reuses those splits when the run
folder holds them for these settings; the trainer gets only the token ids of the training split, and the
held-out split gives the held-out loss. The table gives the token lengths: longer rows cost more memory and
time, which the batch plan below takes into account."""),
    ("code", """prepared = data_stage.prepare(cfg, run)
show.length_table(prepared.stats)"""),
    ("md", """## LoRA: what trains

A linear layer computes `W x`. LoRA keeps `W` frozen (in 4-bit on the GPU) and adds a low-rank path:
`W x + (alpha / r) * B A x`, where `A` has `r` rows and `B` has `r` columns. Only `A` and `B` train, so the
optimizer state and the saved adapter are small, and the base model on disk is untouched. `B` starts at zero,
so before the first step the adapted model answers exactly as the base model did in notebook 01.

The table shows `cfg.lora`, the values `add_lora` receives, with what each one does. The seed recipe uses
r = 16, alpha = 16 (scale 1), no dropout, no bias, all seven linear layers of each block, and Unsloth's
gradient checkpointing. The `cpu` profile uses r = 8, alpha = 16 (scale 2) on its tiny model."""),
    ("code", """show.lora_table(cfg.lora)"""),
    ("md", """## Training: what the run folder says to do

`train_stage.begin` checks `cfg` again and looks at the run folder first, holding its lock until the adapter is
saved:

- **reuse**: `train/manifest.json` says an adapter was trained with exactly these model, data, LoRA and training
  settings, and its files are there: nothing loads and nothing trains below.
- **resume**: an earlier run with these settings stopped part-way (a dropped Kaggle session): `job.resume_from`
  is the latest complete checkpoint, and `trainer.train` continues from it with its optimizer, scheduler and
  random state, ending where an uninterrupted run ends. `cfg.train.resume = False` starts over.
- **train** from step 0 otherwise.
- **refused**: a finished adapter made with *other* settings is never trained over. The error names the fields
  that differ; use a new run folder, or `overwrite=True`, which first moves the old one to `<run>/replaced/`.
- **ddp**: with `train.processes` other than 1 (0: every visible GPU) torchrun trains in other processes (the
  last cell of this section), with transformers + peft; their output appears here as it comes."""),
    ("code", """job = train_stage.begin(cfg, run, prepared, processes=distributed.training_processes(cfg))
print(job)"""),
    ("md", """## Loading the model

`FastLanguageModel.from_pretrained` loads the base model and its tokenizer: the Hub id (or local folder), the
longest sequence to prepare for, the compute dtype (bf16 on compute capability 8.0+, fp16 on a T4; float32 on a
CPU) and 4-bit nf4 weights (QLoRA; CUDA only). `language_model(backend)` is Unsloth's `FastLanguageModel` where
Unsloth runs (notebook 00 says why or why not); elsewhere (a CPU, DDP) it is a small class with the same calls
on transformers + peft, so these cells run everywhere. `prepare_tokens` then sets a pad token distinct from EOS
(notebook 02 says why) and puts the pad and EOS ids in the generation config."""),
    ("code", """backend = job.backend  # choose_backend(cfg): name, dtype, 4-bit, and why
FastLanguageModel = language_model(backend.name)
if job.trains_here:  # False when the adapter is reused or torchrun trains
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolve_model_path(cfg.model.name),  # a Hub id, or the folder of a local model
        max_seq_length=cfg.model.max_seq_length,
        dtype=getattr(torch, backend.dtype),
        load_in_4bit=backend.load_in_4bit,
        revision=cfg.model.revision,
    )
    print(prepare_tokens(model, tokenizer, cfg.model.pad_token))"""),
    ("md", """## Adding LoRA

`get_peft_model` wraps the frozen model with the adapters of the table above. The batch plan (shown after
training), made from the loaded weights' memory, decides whether gradient checkpointing is needed
(`use_gradient_checkpointing`)."""),
    ("code", """if job.trains_here:
    plan = job.batch_plan(model)  # micro-batch x accumulation for this GPU, from the weights and the rows' lengths
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias=cfg.lora.bias,
        target_modules=list(cfg.lora.target_modules),
        use_gradient_checkpointing=job.gradient_checkpointing(plan),
        random_state=cfg.lora.random_state,
        max_seq_length=cfg.model.max_seq_length,
    )"""),
    ("md", """## The trainer

TRL's `SFTTrainer` gets the peft model, the tokenizer, the training rows' token ids, the held-out rows (for the
held-out loss) and `SFTConfig` with `job.sft_arguments(plan)`: `cfg.train`'s values, the plan and the run
folder's checkpoints (shown after training). `token_budget_env` tells Unsloth the most tokens one pass may hold (0: no limit)."""),
    ("code", """if job.trains_here:
    model.config.use_cache = False  # the KV cache is for generation; training recomputes every position
    with token_budget_env(plan.token_budget):
        trainer = SFTTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=prepared.trainer_columns("train"),  # only input_ids: text columns break the collator
            eval_dataset=job.eval_dataset,
            args=SFTConfig(**job.sft_arguments(plan)),
        )"""),
    ("md", """## Training

`trainer.train` runs `max_steps` optimizer steps, printing the loss every `logging_steps` and the held-out loss
every `eval_steps`, and writing a checkpoint every `save_steps` (the last two kept). `job.session` carries the
time of interrupted sessions into each checkpoint, turns out-of-memory into advice naming the values to change,
and closes W&B however training ends. `job.save` writes the adapter and tokenizer to a temporary folder and
renames it to `train/adapter` (a kill never leaves half an adapter), then the metrics and the manifest.

`distributed.ensure_trained_anywhere` then gives the result: the adapter just saved or reused, read back from
the run folder; with `train.processes` > 1 it trains here under torchrun, one process per GPU."""),
    ("code", """if job.trains_here:
    with job.session(trainer, plan):
        trainer_stats = trainer.train(resume_from_checkpoint=job.resume_from)
    job.save(trainer, model, tokenizer, plan, trainer_stats)
result = distributed.ensure_trained_anywhere(cfg, run, prepared)
used = result.metrics
print(result.adapter_dir)"""),
    ("md", """## The batch plan: how the effective batch of 8 is run

The recipe averages the gradient of 8 rows into each optimizer step: `per_device_train_batch_size` 2 rows per
forward and backward pass, `gradient_accumulation_steps` 4 passes summed before the step. The learning rate,
the warm-up and the 60 steps were chosen with that effective batch; another one would change how far each step
moves and how many rows 60 steps see (60 x 8 = 480, about one pass over 500 rows). So the plan never changes
the effective batch, only how it is split, which changes memory use and speed but not what is learned (up to
floating-point rounding).

`plan_batches` decides from the GPU's memory, the weights' size and the rows' real token lengths:

- **micro-batch x accumulation**: on a large GPU the 8 rows run as one pass (8 x 1); on a T4 (15 GiB) a
  2048-token row does not fit without recomputation, so the recipe's 2 x 4 stays.
- **padding-free**: with Unsloth the rows of a pass are concatenated without pad tokens, each attending only
  to itself; transformers' attention would let them see each other, so that backend pads.
- **gradient checkpointing**: kept where memory needs it, turned off where every activation fits (faster).
- **token budget**: the most tokens one pass may hold; a step with more runs as several passes that sum to the
  same gradient.

Without a GPU the plan keeps the values as set; the `cpu` profile sets 4 x 1 (an effective batch of 4) to
train its tiny model on 56 sample rows quickly, so the table below shows 4 there, not 8. Under DDP (`train.processes` > 1) each process takes its share
of the accumulation, so micro-batch x accumulation x processes is still 8.

The plan is made once the model has loaded (`job.batch_plan(model)` above), from the memory its weights take;
the table is the plan the runner recorded in `train/metrics.json` and trained with."""),
    ("code", """show.batch_plan_table(used["batch_plan"], used["processes"])"""),
    ("md", """## The SFT arguments

These are the keyword arguments the trainer cell passed to TRL's `SFTConfig` (`job.sft_arguments(plan)`,
`training.sft.sft_arguments` with `cfg`'s values and the plan), as recorded in `train/metrics.json`. What they
mean:

- `learning_rate` 2e-4 is high next to full fine-tuning (~1e-5) because only the small LoRA matrices move,
  starting from zero; `warmup_steps` 5 ramps it up from 0, then `lr_scheduler_type` linear brings it back to 0
  at `max_steps`.
- `optim` adamw_8bit keeps AdamW's two moment estimates in 8 bits (bitsandbytes, CUDA only; the `cpu` profile
  uses adamw_torch); `weight_decay` 0.01 pulls the LoRA weights slightly toward zero.
- `bf16` / `fp16`: the precision of the forward and backward passes. bf16 needs compute capability 8.0
  (A100, H100, L4); a T4 (7.5) gets fp16 with loss scaling. The CPU trains in float32 (both false).
- `max_length` is `model.max_seq_length`; rows longer than it were dropped or cut by notebook 02.
- `logging_steps`, `eval_steps`, `save_steps`: how often the training loss is logged, the held-out loss is
  computed and a checkpoint is written.
- `seed` and `data_seed` fix the order in which rows are drawn (and any dropout), so a rerun with the same
  settings gives the same adapter."""),
    ("code", """show.values_table(used["sft_arguments"], "SFTConfig argument")"""),
    ("md", """## Trainable parameters

Each adapted matrix of shape out x in gets `r x (in + out)` trainable numbers. For the seed recipe on the 8B
model (32 blocks; q and o 4096 x 4096, k and v 4096 -> 1024, gate and up 4096 -> 14336, down 14336 -> 4096) that
is 16 x (2 x 8192 + 2 x 5120 + 3 x 18432) x 32 = 41,943,040, about 0.5% of the 8 billion weights. The count the
trainer saw should equal the one computed from the model's shapes. (In 4-bit, bitsandbytes stores two weights
per byte, so the "all parameters" count of a 4-bit model reads about half the real number of weights.)"""),
    ("code", """show.values_table({
    "trainable (LoRA A and B)": used["trainable_parameters"],
    "expected: r x (in + out), summed": expected_lora_parameters(
        AutoConfig.from_pretrained(resolve_model_path(cfg.model.name), revision=cfg.model.revision),
        cfg.lora.r, cfg.lora.target_modules),
    "all parameters": used["total_parameters"],
    "share that trains": f"{used['trainable_parameters'] / used['total_parameters']:.2%}",
})"""),
    ("md", """## Weights & Biases

With `train.wandb=auto` (the default) the run logs to W&B online when a `WANDB_API_KEY` is set and the W&B
server answers (on Kaggle: Add-ons > Secrets, switched on for this notebook); otherwise it logs offline into
the run folder, and training never waits on W&B. An offline run can be uploaded later from any machine with
a key: `wandb sync <run folder>/train/wandb/offline-run-*`. `train.wandb=off` turns it off. Under DDP only
rank 0 logs. The line below says which mode this run used and why."""),
    ("code", """print(used["wandb"])"""),
    ("md", """## The loss curve, and how to read it

The **training loss** is the mean next-token cross-entropy over the tokens of the rows of each logged step
(prompt included, as in the recipe), averaged over the steps since the last log. The **held-out loss** is the
same quantity on the held-out rows, which the model never trains on, measured with the weights at the end of
its step; since the training loss averages weights from earlier in its window, early on the held-out point
can sit below the training curve without meaning anything.

- A falling training loss says the adapter is learning to predict this dataset's text: its phrasing, its
  reasoning style, where `</think>` and EOS come. It is noisy from step to step, since each step sees 8
  different rows.
- The held-out loss says whether that carries over to unseen rows of the same dataset. If it stops falling or
  rises while the training loss keeps falling, the adapter is memorising the training rows (overfitting); with
  60 steps of 8 rows, about one pass over the data, that is unlikely.
- What it does **not** say: a lower loss is not better answers. The loss rewards reproducing the reference
  text token by token; an answer can be worded differently and be right, or match the style and be medically
  wrong. Whether the fine-tuned model answers better is what notebook 04 measures: it generates answers with
  both models and compares them on the held-out questions, with confidence intervals.
- On the `cpu` profile the model is tiny and random: its loss falls from about log(vocabulary) because it
  learns which tokens are common, which shows the pipeline trains, and nothing about medicine."""),
    ("code", """show.loss_curve(result.log_history);"""),
    ("md", """## On a Kaggle T4

A T4 has compute capability 7.5: no bf16, so the backend chooses float16 and the trainer trains with `fp16`
and loss scaling (the `fp16` argument above). Its 15 GiB hold the 8B model in 4-bit (~5.7 GiB) and the recipe's
2 x 4 batch with Unsloth's gradient checkpointing (~6.8 GiB at 2048-token rows, measured under a 15 GiB cap on
an H100). Expect roughly 25-45 minutes for 60 steps (an estimate). Checkpoints every 10 steps mean a dropped
session loses at most a few minutes: rerun the notebook and it resumes. With "GPU T4 x2",
`overrides={"train.processes": 2}` trains on both under DDP with transformers + peft, keeping the effective
batch of 8."""),
    ("md", """## Results

The stage's headline numbers, also written to `results/03.json` in the run folder. Each loss is named for what
it is: the trainer's cross-entropy is a mean per token over the whole row, the prompt's tokens included, so it
is not notebook 04's held-out NLL, which scores only the completion (reasoning, `</think>`, answer, EOS). The
training loss is given twice: as last logged (the mean of the steps since the log before it) and as the mean of
all logged values, the figure the model card quotes."""),
    ("code", """show.record_results(run, "03", {
    "optimizer steps": used.get("global_step", cfg.train.max_steps),
    # What each loss is: both are mean cross-entropy per token over every token of the row, prompt included
    # (notebook 04's NLL scores the completion only, so the two are not the same number).
    f"training loss, last log (mean of the {cfg.train.logging_steps} steps before it; all tokens, prompt included)":
        used.get("final_train_loss"),
    "training loss, mean of all logged values (all tokens, prompt included)": used.get("train_loss"),
    "held-out loss, last evaluation (all tokens, prompt included; not notebook 04's completion NLL)":
        used.get("final_eval_loss"),
    "seconds": used["seconds"], "tokens/s": used.get("tokens_per_second"),
    "trainable parameters": used["trainable_parameters"], "backend": used["backend"],
    "batch plan": f"{used['batch_plan']['micro_batch']} x {used['batch_plan']['accumulation']}: {used['batch_plan']['reason']}",
})"""),
]
