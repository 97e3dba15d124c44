"""Chapter source of notebooks/05_export.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 05 · Export

The trained adapter is only useful outside this notebook series once other tools can load it. This chapter
writes the fine-tuned model in three forms, checks each against the model that was trained, and then pushes
them to the Hugging Face Hub, or, without a token, writes exactly what would be pushed.

| artefact | what it is | loads with |
|---|---|---|
| adapter | the LoRA weights (tens of MB for the 8B model) and the tokenizer | peft: `PeftModel.from_pretrained(base, folder)`; needs the base model too |
| merged 16-bit | the adapter folded into the base weights, `W + scale · B·A` | transformers `AutoModelForCausalLM.from_pretrained`, vLLM, TGI |
| GGUF f16 / q8_0 / q4_k_m | one file per type, 16-bit or quantized | llama.cpp, Ollama (with the written `Modelfile`), LM Studio |

**What it needs.** The adapter of chapter 03 (trained first when missing or made with other settings), the base
model's 16-bit weights (downloaded when not in the cache) and, for the model cards, the comparison of
chapter 04 when it exists (the card then quotes its headline and table; without it the card makes no claim).

**What it writes.** `adapter/`, `merged_16bit/`, `gguf/` (with `Modelfile`), each with a `README.md` model
card, in the run folder's `export/` or in `export.output_dir`; on Kaggle the large files go to `/kaggle/tmp`
(see below). The run folder always gets `export/exported.json` (every path, size and check), `export/hub/`
for a dry run, and `results/05.json`.

**How long.** On Kaggle, for the 8B model: downloading the 16 GB of 16-bit base weights takes several minutes
when they are not cached, the merge one shard at a time on the CPU a few minutes, and writing and re-reading
each GGUF file several minutes more; **roughly 20-40 minutes** with the default `q8_0` and `q4_k_m`. These are
estimates, not measurements on a T4. The CPU profile's tiny model exports in well under a minute. Measured on an H200 with the 8B shape (random weights, the bundled rows, 51 held-out + 24 multiple-choice questions at 1,200 tokens; BENCHMARKS.md): 169.1 s, for
the adapter, a float16 merge and a q8_0 GGUF, each checked (the export cell 145.7 s: merge and write 34.3, GGUF
write 18.2, its weight check 10.9, transformers' read-back 48.2). Each step's time is in `exported.json`
(`seconds`)."""),
    ("md", """## The settings this chapter uses

`cfg.export` decides what is written and where: `save_merged_16bit` and its `merged_dtype`, the `gguf` types,
where llama.cpp's quantizer is (`llama_quantize`), how many greedy tokens each check compares
(`check_tokens`), the Hub repository (`hub_repo`), whether new repositories are private (`hub_private`) and which
artefacts to `push`; whether each export's multiple-choice accuracy is compared with the adapter's
(`accuracy_check`: auto, on or off), and below which share of the adapter's effect an export is warned about
(`effect_kept_warn`) or refused (`effect_kept_min`). Change one with e.g. `cfg.export.gguf = ["q8_0"]` in a cell before the export runs, or
`overrides={"export.gguf": ["q8_0"]}` with papermill; the export is redone when its settings change."""),
    ("code", """import os
from r1helpers.core import prompts, show
from r1helpers.export import gguf_checks, hub, summary
from r1helpers.export.files import save_tokenizer, write_adapter
from r1helpers.export.gguf import write_gguf_files
from r1helpers.export.merge import merge_lora
from r1helpers.workflow import export, export_setup
show.config_table(cfg).filter(regex=r"^export\\.", axis=0)"""),
    ("md", """## Where the files go, and the disk space check

An 8B export is large: the merged 16-bit model is about 16 GB, a q8_0 GGUF about 8.5 GB, a q4_k_m about 5 GB,
and the merge may first download 16 GB of base weights. Kaggle keeps only about 19.5 GB of `/kaggle/working`
with a saved version, so on Kaggle the large files go to the session's own disk, `/kaggle/tmp`, which is
larger but not kept: download or push what you want to keep before the session ends. Everywhere else they go
to the run folder's `export/`, unless `export.output_dir` says otherwise.

Before writing anything, the export estimates every file's size from the parameter count, adds a margin and
compares the sum with the free space on each disk involved. If it does not fit, it stops with a message saying
what to change, and nothing is written. Each artefact is then written into a temporary folder, checked, and
only renamed into place when its checks pass, so a failed or interrupted export never leaves a half-written
model behind."""),
    ("md", """`export.begin` takes the run folder's lock (held until `job.finish` below, so no other process writes
this run's export meanwhile) and decides, saying which in one line:

- **reused**: the run folder holds an export made with these settings *from the adapter now in
  `train/adapter`* (sha256); the cells below then write nothing and `job.finish` reads the record;
- **building**: there is none, or it was made from another adapter (an export killed half-way), which is made
  again; finished exports made with *other settings* are refused, or with `overwrite=True` moved aside to
  `replaced/` (in the run folder, and in `export.output_dir` for the large files), never deleted.

Before anything is replaced it checks that `train/adapter` loads (its safetensors file whole, and the one
recorded at the last export when training has not run since): a damaged adapter stops the stage with a
paragraph naming the file, and the exported copy stays as it is. Then the disk space, as above."""),
    ("code", """job = export.begin(cfg, run)  # the lock; reused / building / refused; adapter and disk space checked
print("large files go to:", job.out)"""),
    ("md", """## The chat template is the training prompt

A model fine-tuned on one prompt format answers best when it is prompted the same way. Every export carries a
chat template (`prompts.template_for(tokenizer)`, in `tokenizer_config.json` and inside each GGUF) that renders a
user message into exactly the training prompt: the preamble, the medical-expert instruction, the question, and
`### Response:` followed by `<think>`. It starts with the BOS token only when the tokenizer puts BOS before the
training text (the R1 distill's does; SmolLM2's, in the `smollm2` profile, does not), so the rendered prompt has
the training prompt's token ids, not one token more. So `tokenizer.apply_chat_template(...)` in transformers, llama.cpp's
chat mode and LM Studio all build the prompt the model was trained on. Here it is rendered the way llama.cpp
and LM Studio do (Jinja), for the recipe's example question:"""),
    ("code", """question = cfg.infer.example_questions[0]
tokenizer = export_setup.export_tokenizer(cfg)  # the training tokenizer with the template that follows its BOS (job.tokenizer)
rendered = gguf_checks.render_template(tokenizer.chat_template, question, bos=tokenizer.bos_token, eos=tokenizer.eos_token)
print(rendered)
print("same token ids as the training prompt:",
      tokenizer(rendered, add_special_tokens=False)["input_ids"] == prompts.encode_prompt(tokenizer, question))"""),
    ("md", """## The adapter

The LoRA weights and their config are copied with the tokenizer (and its chat template). peft then loads that
folder onto the base model in float32: base + adapter's greedy tokens and logits on the probe prompts are the
reference every merged model must reproduce. `job.writing(...)` gives a temporary folder beside the final one
and renames it into place, with its model card, once the cell's step and check have passed."""),
    ("code", """if job.building:
    with job.writing("adapter") as folder:
        write_adapter(job.adapter_dir, folder, job.tokenizer)
        job.check_adapter(folder)  # PeftModel.from_pretrained(base, folder): the merged model's reference"""),
    ("md", """## The merge into 16-bit weights

`merge_lora` reads the base model's 16-bit checkpoint one shard at a time, computes `W + scale · B·A` in
float32 and rounds once to `job.dtype` (from `export.merged_dtype`). The check then reads every merged weight
back, and runs the merged model with plain transformers against the reference above. With
`export.save_merged_16bit = False` the merged model is only the source of the GGUF files: it goes to a
temporary folder, deleted once they are written."""),
    ("code", """if job.building and (cfg.export.save_merged_16bit or job.gguf_kinds):
    with job.writing("merged_16bit") as folder:
        merge_lora(job.base_dir, job.out / "adapter", folder, job.dtype)
        save_tokenizer(job.tokenizer, folder)  # with the chat template; pad distinct from EOS, as in training
        job.check_merged(folder)  # every weight; logits and greedy tokens vs base + adapter (else another dtype)"""),
    ("md", """## The GGUF files

One file per type in `cfg.export.gguf`, written from the merged model with gguf-py (q4_k_m by llama.cpp's
`llama-quantize`, when one is found), and an Ollama `Modelfile`. Each is then checked against the merged model."""),
    ("code", """if job.building and job.merged_dir:
    with job.writing("gguf") as folder:
        files = write_gguf_files(job.merged_dir, folder, job.gguf_kinds, job.stem, cfg.model.name,
                                 job.tokenizer.chat_template, job.quantizer, timed=job.timed)
        job.check_gguf(files)  # metadata and template; every weight; transformers' read-back"""),
    ("md", """## The Hub push, or its dry run

Pushing needs two things: a Hugging Face token (`HF_TOKEN`, from the environment, Kaggle secrets or `.env`;
never printed or stored) and a repository id, `cfg.export.hub_repo = "you/r1-medical"` (or
`overrides={"export.hub_repo": "you/r1-medical"}`). Each artefact then goes to its own repository: the adapter
to `you/r1-medical-lora`, the merged model to `you/r1-medical`, the GGUF files to `you/r1-medical-GGUF`,
created private unless `export.hub_private` is false. Without a token or a repository id nothing leaves the
machine: `export/hub/` in the run folder gets `upload_plan.json` (every file with its size and sha256) and the
model card each repository would get. `job.finish` then writes `export/exported.json` and the stage's manifest,
and releases the run folder."""),
    ("code", """hub_result = None
if job.building:
    repos = hub.repo_ids(job.repo)  # <repo>-lora, <repo>, <repo>-GGUF from export.hub_repo (or a placeholder)
    reason = hub.why_not_push(cfg.export.push, cfg.export.hub_repo)  # None: a token, a repo id and the Hub
    if reason is None:
        hub_result = hub.push(job.to_push(), repos, cfg.export.hub_private, os.environ["HF_TOKEN"])
    else:
        hub_result = hub.dry_run(job.to_push(), repos, reason, run.stage_dir("export") / "hub", cfg.export.hub_private)
exported = job.finish(hub_result)  # exported.json, the manifest; the lock released
print(exported["hub"]["message"])
summary.summary_table(exported)"""),
    ("md", """## The checks, and what they guarantee

**Merged 16-bit.** Training may run on 4-bit weights, but the merge reads the base model's 16-bit checkpoint,
computes `W + scale · B·A` in float32 and rounds once to `export.merged_dtype` (`auto`: float16 first, then the
checkpoint's own type, bfloat16 for R1-distill, the first whose merge passes). Two checks follow. Every merged tensor is read back and must be within one
16-bit rounding of the exact sum. Then the merged model, loaded with plain transformers, is run on the
training prompt of the example question and two held-out questions, against base + adapter loaded through
peft from the exported adapter folder (which checks that folder too):

- the largest logit difference must stay within **2% of the logit range**;
- it must also stay within **10% of the adapter's own effect** (base + adapter against the base alone, adapter
  switched off, on the same tokens): a merge that lost part of the adapter fails here even when its greedy
  tokens agree;
- the greedy tokens (16 per prompt) must be **identical**, except at a near tie: where the reference itself
  ranks the two tokens within twice the largest logit difference measured, that difference can flip the pick,
  and the report counts it (`greedy_near_ties`) instead of failing. Measured: on the 8B shape with random weights,
  whose logits are often near ties, a float16 merge within 0.10% of the logit range had passed the exact rule in
  one run and failed it in the next (one token of 48 flipped); on the tiny model a bfloat16 merge flipped one
  token of 48 at a margin of 0.0105 against a largest difference of 0.067, keeping 98% of the adapter's effect.

One caveat is worth knowing. bfloat16 keeps only 8 significant bits, so a weight can move only in steps of
0.4-0.8% of its size. A LoRA update smaller than half such a step rounds back to the base value: a bf16
merge can erase a small LoRA update, partly or entirely, even though every number is "within one rounding".
The weight check counts how many of the weights the adapter changes come out unchanged; when that share is
large, the merged model behaves more like the base than the adapter does. Use the adapter itself, or merge
into float16 (`cfg.export.merged_dtype = "float16"`, 11 significant bits) if the base's range allows.

**GGUF.** Each file is checked three ways: its vocabulary, special token ids and chat template must match the
training tokenizer and render the training prompt token for token; every tensor, dequantized, must be close to
the merged weights (tolerance by type); and the file is read back by transformers' GGUF loader (gguf-py's
reader) and compared with the merged model: f16/bf16 within 1-2%
of the logit range with identical greedy tokens (near ties excepted, as above), q8_0 within 5%, q4_k_m within
25%. Logit checks load a float32
copy of the model; when that does not fit in memory (the 8B model on Kaggle) they are skipped with a note and
the per-tensor checks stand in for them. q4_k_m needs llama.cpp's `llama-quantize` binary and is skipped, with a
note, when none is found."""),
    ("md", """## What each export keeps of the fine-tune

A tolerance on the logit range can pass an export that has lost much of what fine-tuning changed: the adapter
moves the logits by far less than their range. Measured on a real adapter, a q8_0 GGUF passed (its largest
logit difference 1.6% of the range, against 5%) while that difference was about 38% of the adapter's own effect,
and its greedy tokens left the reference's at the second token on two prompts of three. So every export is also
measured against the adapter's effect itself, on the same probe prompts and tokens:

- **share of the adapter's effect kept** = 1 - |exported - tuned| / |tuned - base|, over all probe logits (each
  position's logits centred, since a constant shift changes no probability): 100% reproduces base + adapter, 0%
  is as far from it as the base model is (an adapter scaled by 0), below 0 is noise larger than the adapter's
  effect. Beside it, the projection of (exported - base) on (tuned - base): how far along the adapter's own
  direction the export goes. A share below `export.effect_kept_warn` is a warning in the notes; below
  `export.effect_kept_min` (unset by default) the export fails.
- **multiple-choice accuracy** on `compare.mcq_source`'s first `compare.mcq_rows` questions, scored as in
  chapter 04 by option likelihood (no generation): base + adapter (float32, peft), the merged model and each
  GGUF read back by transformers answer the same questions, and the exact McNemar test compares each export's
  right/wrong answers with the adapter's, question by question. A significant drop (p < 0.05, fewer right)
  fails the export with a paragraph saying what to do (merge in float16, export f16 rather than a quantized
  file). With `export.accuracy_check = "auto"` this runs on a GPU, and on the CPU only while the model and the
  set are small (the SmolLM2 profile's 24 questions run; the 8B on a CPU does not).

With 24 questions only a large drop is significant (at least 6 of the adapter's right answers lost, none
gained); the `detectable_change` in each check says how large a change this set can show. The base model's
accuracy is listed too: when the adapter itself does not change the answers, equal accuracy says little."""),
    ("code", """summary.parity_table(exported)"""),
    ("md", """## Running the GGUF with Ollama

Ollama does not use the Jinja template stored in a GGUF, so the export writes a `Modelfile` next to the GGUF
files with the training prompt as Ollama's template. In that folder: `ollama create medical-cot -f Modelfile`,
then `ollama run medical-cot`. llama.cpp (`llama-cli -m <file>.gguf -cnv`) and LM Studio read the template from
the file itself."""),
    ("code", """print(summary.modelfile_text(exported))"""),
    ("md", """## Loading the other exports

The adapter, with the base model (downloads it):

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained("<export>/adapter")
tok = AutoTokenizer.from_pretrained("<export>/adapter")
```

The merged model, on its own (also `vllm serve <export>/merged_16bit`):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<export>/merged_16bit", dtype="auto")
tok = AutoTokenizer.from_pretrained("<export>/merged_16bit")
ids = tok.apply_chat_template([{"role": "user", "content": "..."}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=1200)
```

Each folder's `README.md` model card repeats this, with the recipe, the comparison of chapter 04 and the
export checks, and says plainly that the model is not for clinical decisions."""),
    ("md", """## Keeping the model after the Kaggle session

On Kaggle, `/kaggle/tmp` is gone when the session ends and `/kaggle/working` keeps about 19.5 GB with a saved
version. `keep_model` copies the adapter and the largest GGUF file that fits into `/kaggle/working/.../kept/`, then
keeps the adapter as a private Kaggle Model (`kagglehub.model_upload`) when Kaggle credentials are there, or says
which to add. It does nothing off Kaggle; `export.push` without `adapter` (or the pipeline's `--dry-run`) skips the
upload."""),
    ("code", """from r1helpers.kaggle_model import keep_model
show.lines(keep_model(run.root, cfg.model.name, dry_run="adapter" not in cfg.export.push) or ["not on Kaggle: nothing to keep"])"""),
    ("md", """## Results of this chapter

Each artefact's path, size in MiB and which checks passed or were skipped (an artefact whose check fails is
not kept, so a listed one passed what ran), and what happened with the Hub; saved to `results/05.json`."""),
    ("code", """show.record_results(run, "05", summary.key_results(exported))"""),
]
