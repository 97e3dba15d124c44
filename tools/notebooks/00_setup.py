"""Chapter source of notebooks/00_setup.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 00 · Setup: the machine, the secrets and the configuration

This chapter trains nothing. It finds out, and shows with the reason for each, the facts that every later chapter
depends on:

- which machine this is, and whether its GPU computes natively in bfloat16;
- which backend loads and trains the model (Unsloth, or transformers + peft) and why;
- the versions of the libraries, so that a result can be traced back to the code that made it;
- which secrets (a Hugging Face token, a W&B key) were found, never their values, and how to add them on Kaggle;
- every configuration value of the recipe, in one table, and the three ways to change any of them.

**Needs:** nothing from earlier chapters. **Writes** into the run folder (`run_dir`, shared by all six notebooks):
`config.yaml` (every value), `environment.json` (machine, backend, versions, where each secret was found) and
`results/00.json`. **Time:** under a minute on a Kaggle T4 once the packages are installed; on Kaggle the first
cell may spend a few more minutes installing the pinned packages the image lacks (an estimate, not a measurement)."""),
    ("md", """## What the start cell just did

The cell above, `cfg, run = r1helpers.start(run_dir, profile, overrides, config_file, stage="00")`, is the same in
all six notebooks but for `stage`, the notebook's number. In order, it:

1. picks the profile: `seed` is the recipe (the 8B model, the medical dataset) and needs a CUDA GPU; `cpu` swaps in
   a tiny locally built model and a bundled sample of the data, so that the whole series runs in minutes on a laptop
   as a check of the code, not as a model. `auto` picks `seed` when a CUDA GPU is present and the Hugging Face Hub
   is reachable, else `cpu`;
2. builds the configuration from the profile, then `config_file`, then `overrides`, and checks every value: a
   wrong type or a value out of range stops here, naming the field, before anything heavy loads;
3. opens the run folder and saves `config.yaml`;
4. looks for the secrets;
5. detects the hardware and decides the backend and the dtype, and writes all of it to `environment.json`. Where the
   notebook loads a model through Unsloth (`stage` 00 checks that it imports, 03 trains with it, 01 and 04 when
   their generation path is Unsloth's), it imports Unsloth first: that takes about 45 s on the H200, so notebooks
   02 and 05, and 01 and 04 on a large GPU, skip it (`session.imports_unsloth` says which).

The lines it printed are a summary. The cells below read `environment.json`, the record later chapters rely on."""),
    ("code", """from r1helpers.core import show
from r1helpers.core.runs import read_json
env = read_json(run.root / "environment.json")  # what start() recorded about this machine
show.machine_table(env)"""),
    ("md", """## Precision: bfloat16 only from compute capability 8.0

A 16-bit float comes in two kinds. **float16** (fp16) has 10 mantissa bits but only 5 exponent bits: values above
65,504 overflow, so mixed-precision training in fp16 multiplies the loss by a scale factor and lowers it when
gradients overflow. **bfloat16** (bf16) keeps float32's 8 exponent bits and has 7 mantissa bits: it almost never
overflows, so no loss scaling is needed, which is why bf16 is preferred where the hardware has it.

NVIDIA GPUs compute bf16 natively from **compute capability 8.0** (Ampere and newer: A100, A10, L4, H100). Kaggle's
T4 is 7.5 (Turing) and its retired P100 is 6.0: neither has native bf16. `torch.cuda.is_bf16_supported()` has been
reported to answer `True` on a T4, where bf16 is emulated and slow, so this project does not ask it:
`resolve_dtype` decides from the capability alone. With `model.dtype = "auto"` that gives bf16 on 8.0 or newer,
fp16 on older GPUs and float32 on a CPU. The dtype is the type of the weights that are not quantized (the LoRA
adapters, norms, embeddings) and the type the 4-bit layers compute in; the 4-bit weights themselves stay in nf4."""),
    ("code", """from r1helpers.core.hardware import detect_hardware, resolve_dtype
hw = detect_hardware()
print("GPU:", hw.gpu, "| native bf16 (capability >= 8.0):", hw.bf16)
print(f"model.dtype = {cfg.model.dtype!r} ->", resolve_dtype(cfg.model.dtype, hw))"""),
    ("md", """## Backend: Unsloth, or transformers + peft

Both backends give the same thing to the rest of the series: a peft model with LoRA adapters on the same layers,
trained by TRL's `SFTTrainer` with the same settings. They differ in speed and memory.

- **Unsloth** replaces attention, RoPE, the MLP and the cross-entropy with fused Triton kernels and offloads
  activations for gradient checkpointing; on a T4 it trains faster in less memory, which is why the recipe uses it.
  It needs an NVIDIA GPU of compute capability 7.0 or newer (Triton's minimum) and must import without error.
  It patches transformers when imported, so `start()` imports it before any model loads, in the notebooks that
  load a model through it.
- **transformers + peft + bitsandbytes** is the fallback: on a CPU (the `cpu` profile), on a P100 (6.0), when
  Unsloth is missing or fails to import, and when notebook 03 trains on several GPUs under DDP (one process per
  GPU), where this project does not rely on Unsloth's open-source multi-GPU support.

`model.backend = "auto"` applies these rules; `"unsloth"` or `"transformers"` forces one (and fails with the reason
where it cannot run). `choose_backend` is the function notebooks 01, 03 and 04 call; its answer carries its reason."""),
    ("code", """from r1helpers.core.hardware import choose_backend
choice = choose_backend(cfg, hw)  # model.backend, model.dtype and model.load_in_4bit, decided on this machine
choice"""),
    ("md", """## Package versions

Unsloth, TRL, transformers and peft change quickly, and a result depends on their versions as much as on the
recipe. The table below is what this kernel imports. Every stage's `manifest.json` in the run folder records the same
list, so an output can always be traced to the code that made it. On Kaggle, the image provides torch and CUDA;
`r1helpers.setup()` in the first cell installs the versions pinned in `pyproject.toml` that the image lacks."""),
    ("code", "show.versions_table(env)"),
    ("md", """## Secrets

Two secrets are used, and both are optional:

- `HF_TOKEN`: needed only for gated models and for pushing the exported model to the Hub (notebook 05). The seed
  model and the dataset are public.
- `WANDB_API_KEY`: online Weights & Biases logging in notebook 03. Without it W&B logs offline into the run folder;
  `wandb sync` uploads that log later.

`start()` looks in the environment variables, then Kaggle secrets, Colab user data, a `.env` file (in the working
folder or a parent), and only when a person is at the keyboard, a hidden prompt. A value found is put into this
process's environment, where `huggingface_hub` and `wandb` look for it, and nowhere else: never into the config, a
log, the run folder or this notebook. The table shows where each one was found, not what it is.

**To add them on Kaggle:** in the notebook editor open *Add-ons > Secrets*, choose *Add a new secret*, give it the
label `HF_TOKEN` and paste a token from huggingface.co/settings/tokens (a *read* token is enough unless you push);
add `WANDB_API_KEY` the same way with the key from wandb.ai/authorize. Tick the box beside each secret to attach it
to this notebook, then run the cells again from the first. **Elsewhere:** `export HF_TOKEN=...` before starting
Jupyter, or a line `HF_TOKEN=...` in a `.env` file in the repository folder (it is in `.gitignore`)."""),
    ("code", "show.secrets_table(env)"),
    ("md", """## The configuration

Every value the series uses is in one tree of dataclasses, `cfg`, with a section per stage: `model`, `data`,
`lora`, `train`, `infer`, `compare`, `export`. The defaults are the seed recipe; a profile changes some of them
(the `cpu` profile: a tiny model, the bundled sample, fewer steps), and you can change any of them. The table gives
each field's value, who set it and what it means. The profile in use, and why it was chosen:"""),
    ("code", """print(f"profile: {cfg.profile} ({env['profile_reason']})")
show.config_table(cfg)"""),
    ("md", """## How to change a value

There are three ways; all of them go through the same checks as the defaults.

1. **papermill or the pipeline**, for the whole series: `papermill 03_lora_training.ipynb out.ipynb -p overrides
   '{"train.max_steps": 30}'`, or `python -m r1helpers.pipeline --set train.max_steps=30`. In the `parameters`
   cell at the top of a notebook, `overrides = {"train.max_steps": 30}` does the same by hand.
2. **a YAML file** of fields, for a recipe you want to keep: `config_file = "../recipes/my-run.yaml"` holding
   `train: {max_steps: 30}`.
3. **in a notebook**, after the start cell: `cfg.train.max_steps = 30`. This changes the value for that notebook's
   kernel only; the stage runners read `cfg` when they run, so the next stage call uses it.

Whichever way you choose, the run folder notices: each stage's `manifest.json` holds a fingerprint of the settings
that stage depends on, and a stage whose settings changed is rebuilt instead of reused (its message says which
field changed). The cell below is a demonstration: it applies two made-up overrides to a copy of the config,
which this run never uses, and leaves `cfg` as it is."""),
    ("code", """from r1helpers.core.config import apply_overrides
trial = apply_overrides(cfg, {"train.max_steps": 30, "infer.max_new_tokens": 600})  # checked, like `overrides`
print("demonstration only: this run keeps", {"train.max_steps": cfg.train.max_steps,
                                            "infer.max_new_tokens": cfg.infer.max_new_tokens})
print("the same overrides would give", {"train.max_steps": trial.train.max_steps,
                                       "infer.max_new_tokens": trial.infer.max_new_tokens})"""),
    ("md", """## Results

The chapter's record: the profile, the backend and dtype chosen for this machine, the GPU, and the versions of the
libraries that load and train the model. It is written to `results/00.json` in the run folder."""),
    ("code", """v = env["versions"]
show.record_results(run, "00", {
    "profile": cfg.profile, "backend": choice.name, "dtype": choice.dtype, "GPU": show.gpu_label(env),
    "torch": v["torch"], "transformers": v["transformers"], "trl": v["trl"], "peft": v["peft"],
    "unsloth": v["unsloth"] or "not installed",
})"""),
]
