"""Chapter source of notebooks/04_before_after_comparison.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 04 · Before / after comparison

Did fine-tuning make the model better, and in which sense? This chapter puts the base model and the fine-tuned
model (base + the LoRA adapter from chapter 03) side by side and asks **three separate questions**:

1. **Fits the data?** How probable does each model find the *reference* reasoning and answer of held-out rows
   (teacher-forced NLL, no generation)?
2. **Behaves as trained?** What do the generated held-out answers do: is the reasoning closed with `</think>`,
   does the model stop (EOS) before the token limit, how long and how repetitive is what it writes?
3. **More often right?** On a multiple-choice medical set with one gold letter per question, how often does each
   model pick the right option?

The three are kept apart on purpose. Lower held-out loss says the model fits the data's style better; it does
not say the answers are better. In one run of this project a real small model lowered its NLL on 48 of 48
held-out questions while its multiple-choice accuracy stayed at chance and it never once closed `</think>`. So
the overall verdict says "helped" only when question 3 shows better accuracy with an interval that excludes zero.

Both models get the same prompts, the same decoding settings and the same seed, so the only difference between
the two columns is the adapter.

**What it needs.** The prepared data (chapter 02), the base model's generations (chapter 01) and the trained
adapter (chapter 03); each is reused from the run folder when made with the current settings, otherwise rebuilt
here first (training included), so this notebook also works opened alone. The multiple-choice set comes from
`compare.mcq_source`: the whole MedQA-USMLE test split (1,273 questions, 4 options) from the Hugging Face Hub in
the seed recipe, a bundled 24-question sample in the CPU profiles. The seed recipe also scores MedMCQA's validation
split (the first 1,000 questions) and PubMedQA's 1,000 labelled questions (`compare.mcq_more`), each where it
loads, and answers the first 110 MedQA questions again under the dataset authors' own protocol (HuatuoGPT-o1's),
so the base model's figure can be set beside published ones. Before anything is scored, every question that
shares a 64-character span with a training question is counted and left out.

**What it writes.** `finetuned/generations.jsonl` (the fine-tuned model's answers) and `compare/comparison.json`
(every number below, per question too); this notebook's tables and figures are the report. The last cell writes
`results/04.json`.

**How long on a Kaggle T4.** Estimates, not measurements, from the card's specification
(`r1helpers.evaluate.budget`): a forward pass costs 2 x 8.03e9 FLOPs a token, taken at 25 TFLOPS effective (40%
of the T4's 65 fp16 TFLOPS, for 4-bit weights dequantised before each matmul); a decoding step reads the 5.7 GB of
4-bit weights plus each row's KV cache (128 KiB a token) at half the 320 GB/s peak, so 16 rows decoding together
make about 254 tokens/s (16 a sequence, the low end of the 15-25 the benchmarks suggest). Every generated answer is
counted at its token limit, so these are upper bounds for the generation. Loading the 8B model in 4-bit: about 2
minutes. The held-out answers (the example + 50, up to 1,200 tokens, this model only; chapter 01 did the base
model's): about 4 minutes. **Option likelihood** (tokens scored = questions x options x the prompt and one
option, both models): MedQA's 1,273 questions at ~360 tokens a sequence, **about 39 minutes**; MedMCQA's first
1,000 at ~150, **about 13**; PubMedQA's 1,000 at ~420 (the abstract is in the question) and 3 options, **about
27**. **Stated letter** on the first 200 MedQA questions (`compare.mcq_generate_rows`, the most that fit 30 T4
minutes for both models at 1,200 tokens), in the same batches as the held-out answers: **about 14 minutes here**
and as many in chapter 01. **The authors' protocol** on the first 110 questions (`compare.mcq_protocol_rows`, the
most that fit 30 minutes at 2,000 tokens), both models: **about 29 minutes**. Teacher-forced NLL of 50 rows, adapter
off and on: 2-3 minutes. **About 2 hours in all** with every default; `compare.mcq_more = []` saves 40 minutes,
`compare.mcq_protocol_rows = 0` 29, `compare.mcq_rows = 300` about 30. What each size can detect (the smallest
change in accuracy found with 80% power at two-sided 0.05, at 30% of questions answered differently by the two
models; fewer disagreements detect smaller changes): 1,273 questions ±4.3 points (±3.0 at 15% disagreeing), 1,000
±4.8, 200 ±10.8, 110 ±14.5; the former default of 50 questions, ±21.2. Measured on an H200 with the 8B shape and random weights, the bundled rows and the 24-question sample
(not a T4, and before the larger defaults; BENCHMARKS.md): 101.4 s for the stage."""),
    ("md", """## The settings this chapter uses

Two config sections decide everything below. `infer` is the decoding, shared by every generation here: greedy
(`do_sample=False`) or sampling with `temperature`/`top_p`, at most `max_new_tokens` per answer, `batch_size`
questions at once (0: as many as the GPU's memory holds), the generation `path` (chapter 01 explains the
choice), the recipe's `example_questions` plus the first `num_eval_questions` held-out questions. `compare` is
the scoring: `nll_rows` held-out rows scored teacher-forced (0: all), the `bootstrap_samples` and their `seed`, the multiple-choice set (`mcq_source`, `mcq_split`,
`mcq_rows`, 0: all), whether the models also answer it by generation (`mcq_generate`) and on how many of its
questions (`mcq_generate_rows`), the further sets scored by likelihood (`mcq_more`, `mcq_more_rows`), the questions
answered under the authors' protocol (`mcq_protocol_rows`, `mcq_protocol_max_new_tokens`), the contamination check
(`contamination_span`, 0: off) and `primary_metric`."""),
    ("code", """from r1helpers.core import show
from r1helpers.evaluate import compare, views
from r1helpers.workflow import compare_stage, data_stage, generate_stage
show.config_table(cfg).filter(regex=r"^(infer|compare)\\.", axis=0)"""),
    ("md", """To change a value, set it on `cfg` before the cells below run, e.g. `cfg.compare.mcq_rows = 300`,
`cfg.compare.mcq_generate = False` (likelihood scoring only, much faster), `cfg.compare.mcq_source = None` (no
accuracy: the verdict then reads "correctness not measured") or `cfg.compare.mcq_source = "my_questions.jsonl"`
(rows with `question`, `options` {letter: text}, `answer_idx` and `answer`). Papermill takes the same as
`overrides={"compare.mcq_rows": 300}`. Every step reads `cfg` when it runs and compares it with what the run
folder was made with, so a changed value is what this chapter uses: changing `infer` regenerates both models'
answers (the comparison must use one decoding), changing `compare` only rescores.

`primary_metric` does not make the verdict "helped" by itself. A fit metric (`completion_nll`, `cot_nll`,
`answer_nll`, `rouge_l`) only chooses which number the headline quotes for question 1.
`accuracy_likelihood` or `accuracy_generated` makes that one accuracy scoring decide the verdict alone; by
default either scoring can."""),
    ("md", """## The inputs: held-out rows and the base model's answers

`data_stage.prepare` returns the training and held-out splits of chapter 02; `generate_stage.baseline` the base model's
generations of chapter 01 (the example question first, then the held-out questions). Both come from the run
folder when current."""),
    ("code", """prepared = data_stage.prepare(cfg, run)
baseline = generate_stage.baseline(cfg, run, prepared)
print(len(prepared.eval), "held-out rows;", len(baseline), "questions answered by the base model")"""),
    ("md", """## Loading the fine-tuned model

The same loading call as notebook 01, on the generation path the base model's answers took (same weights, same
KV cache), then peft's `PeftModel.from_pretrained` puts notebook 03's LoRA adapter on top. The adapter is not
merged: switched off (`with model.disable_adapter():`) the model is exactly the base model, which the scores
below use for the "before" side, so an 8B model is loaded once in this chapter, not twice.
`train_stage.ensure_trained` gives the run folder's adapter (training it first if it is missing)."""),
    ("code", """import torch
from peft import PeftModel
from r1helpers.core import prompts
from r1helpers.inference import choose
from r1helpers.modeling.fast import language_model
from r1helpers.modeling.load import prepare_tokens
from r1helpers.modeling.local import resolve_model_path
from r1helpers.workflow import train_stage
adapter_dir = train_stage.ensure_trained(cfg, run, prepared).adapter_dir
gen_path = choose.generation_path(cfg, run, "finetuned")  # the path the base model's generations took too
FastLanguageModel = language_model(gen_path.backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=resolve_model_path(cfg.model.name),
    max_seq_length=cfg.model.max_seq_length,
    dtype=getattr(torch, gen_path.dtype),
    load_in_4bit=gen_path.load_in_4bit,
    revision=cfg.model.revision,
)
print(prepare_tokens(model, tokenizer, cfg.model.pad_token))
model = PeftModel.from_pretrained(model, str(adapter_dir))  # base + the LoRA adapter of notebook 03
FastLanguageModel.for_inference(model)
print(f"generation path {gen_path.path} ({gen_path.weights}); adapter {adapter_dir}")"""),
    ("md", """The example question, with the same call as notebook 01 asked the base model."""),
    ("code", """i, question = cfg.infer, cfg.infer.example_questions[0]
prompt_ids = prompts.encode_prompt(tokenizer, question)
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
    ("md", """## The fine-tuned model's answers

`generate_stage.FinetunedModel` holds the loaded model for the generation here, the teacher-forced scoring and
the multiple-choice scoring further down. `generate_stage.finetuned` generates with exactly the questions and
`cfg.infer` settings the base model had, in the same batched call as notebook 01; it prints the path and its
batch plan when it generates. With `compare.mcq_generate` on, the multiple-choice questions are answered here
too, in the same batches as the held-out questions. When the run folder already holds generations made with
these settings, they are reused."""),
    ("code", """tuned_model = generate_stage.FinetunedModel(cfg, run, prepared, model=model, tokenizer=tokenizer, path=gen_path)
tuned = generate_stage.finetuned(cfg, run, prepared, loaded=tuned_model)
show.generations_table(tuned)"""),
    ("md", """A comparison is only fair when both models decoded the same way. Each generation stage recorded its
`infer` settings, its generation path and the weights it ran on in its manifest; the two columns below must be
identical, and `compare_stage.compare` refuses to run when they are not (rerun chapter 01 and this one with
one setting). The batch may differ between the two (the adapter takes a little memory); it changes no setting."""),
    ("code", """import pandas as pd
pd.DataFrame(compare_stage.decoding_used(run))"""),
    ("md", """## The multiple-choice set

Each question is put where the recipe puts a question, so the model sees the prompt it was trained on: the
vignette, its lettered options one per line and a request for the letter, then `### Response:` and `<think>`.
`generate_stage.mcq_preview` shows what the stage passes on: the set, the number of questions, how many are also
answered by generation and under the authors' protocol, the further sets, the contamination check, the decoding of
the generated answers (the `infer` settings above, never streamed) and the first prompt exactly as the model
receives it.

**Contamination.** The training rows were written from medical exam questions, so an evaluation question may be
one the adapter has seen. Before anything is scored, each multiple-choice question (of every set) is compared with
the training rows' `Question` text: one that shares a span of `compare.contamination_span` characters (64, as the
HuatuoGPT-o1 authors checked) after lower-casing and collapsing white space is counted and left out of the
accuracy; the tables below say how many and which. The bundled CPU sample has one such question (74 shared characters
with a bundled training row), so the CPU profile scores 23 of its 24."""),
    ("code", """preview = generate_stage.mcq_preview(cfg)
print(preview.pop("first prompt"))
pd.Series(preview, name="value").to_frame()"""),
    ("md", """## How each question is measured, and how to read it

**1. Fits the data?** Each held-out row is fed to the model exactly as in training (prompt, reference
reasoning, `</think>`, reference answer, EOS) and the probability of every reference token is read off in one
forward pass. The mean negative log-likelihood per token (nats) is reported for the reasoning span, for the answer
span (including EOS) and for the whole completion; perplexity is `exp(NLL)`. *Read it as:* a negative delta
means the fine-tuned model finds the dataset's reasoning and answers more probable, i.e. it imitates the
references' wording and structure better. It says nothing about whether what the model writes is right.

**2. Behaves as trained?** On the generated held-out answers (`infer.num_eval_questions`, 50 by default):
the share that closed the reasoning block, that reached EOS, that were cut at `max_new_tokens`, that had an empty
answer; reasoning and answer lengths in tokens (no "better" direction); the share of repeated word 4-grams in
the text (a model stuck in a loop repeats its 4-grams; lower is better); and ROUGE-L of
the answer to the reference (closeness to one reference text, not correctness). *Read it as:* did fine-tuning
teach the format: think, close `</think>`, answer, stop? A model that never closes `</think>` has given no answer.

**3. More often right?** Every multiple-choice question is scored for both models in two ways:
- *by option likelihood* (cheap, no generation): the mean log-probability per token of each option's text right
  after the prompt; the most probable option is the model's pick. It measures which option the model's
  knowledge favours, not what it would say after reasoning.
- *by stated letter*: the model generates an answer with the same decoding as above (chapter 01 and the cell
  above did, in their generation batches); the letter it states
  after `</think>` is read ("B", "(B)", "Answer: B", "The answer is B", ...). An answer with no letter whose
  whole text is one option's text counts as that option. An answer that cannot be read, for example because the
  reasoning never closed, is **counted wrong, never dropped**: dropping it would reward a model for not
  answering, and both models would no longer be scored on the same questions.

*Read it as:* accuracy before and after with 95% Wilson intervals; the change with its exact paired interval;
McNemar's exact test, which uses only the questions where one model was right and the other wrong; the
detectable change at this n; and the unparseable counts, so that a change in format is not mistaken for a change
in knowledge. With four options chance is 25%. Likelihood scoring covers the whole set; the stated letter covers
its first `compare.mcq_generate_rows` questions, and its row says its own n and detectable change.

**The field's protocol beside ours.** Published figures for these sets are not made with this notebook's prompt.
The dataset's authors (HuatuoGPT-o1, `evaluation/eval.py` and `scorer.py`) ask "Please answer the following
multiple-choice question:", then the question and its "A. text" option lines, in the model's own chat template,
sample at temperature 0.5 and top_p 0.9 with up to 2,000 new tokens, and read the answer leniently: an "answer is
X" statement, else a bare option letter, else an option's text in the answer, else the most similar option. So
the first `compare.mcq_protocol_rows` questions are answered that way too, both models, and read both by that
lenient matcher (implemented here from the authors' description, not copied) and by the strict parser, with
unparseable counts for both: the lenient matcher never fails to pick, its last rule is a guess, so how many
answers each rule decided is given. The base model's figure then sits next to published ones: for
DeepSeek-R1-Distill-Llama-8B about 55 (MedQA), 49 (MedMCQA) and 74 (PubMedQA) as reported by the MedReason
repository's comparison table, and 72.6 on MedQA for HuatuoGPT-o1-8B as reported by the HuatuoGPT-o1 paper (Table
1); none is reproduced here.

**Further sets.** MedMCQA and PubMedQA are scored by option likelihood only (no generation: cheap enough for 1,000
questions each), each with its own accuracy, test and detectable change. They are reported beside the main set and
do not change the verdict.

**Intervals, n and verdicts.** Every metric is computed per question for both models and differenced (after
minus before); resampling questions `compare.bootstrap_samples` times gives a 95% interval of the mean
difference. `n` is the number of questions a metric rests on (a question missing on either side is left out of
both). A metric is *better* or *worse* only when its interval excludes zero, otherwise *no significant
change*."""),
    ("code", """comparison = compare_stage.compare(cfg, run, prepared, baseline, tuned, loaded=tuned_model)
print("fine-tuned model loads in this chapter:", tuned_model.loads)
show.lines([f"Verdict: {comparison['verdict']}.", comparison["headline"], *comparison["notes"]])"""),
    ("md", """## The three answers

One line per question, in words, with the numbers each answer rests on."""),
    ("code", """views.findings_table(comparison)"""),
    ("md", """### 1. Fits the data?

Reasoning, answer and completion NLL: before, after, the delta with its 95% interval, the verdict,
win/tie/loss (questions where the fine-tuned model's NLL was lower, equal or higher) and `n`."""),
    ("code", """views.summary_table(comparison, "fit")"""),
    ("md", """### 2. Behaves as trained?

Rates are shares of the `n` generated held-out answers (0 to 1); lengths are mean tokens; repeated 4-grams is
the mean share per answer. Look first at *reasoning block closed* and *EOS reached*: if they stay near 0, the
model is not producing finished answers, whatever its NLL did."""),
    ("code", """views.summary_table(comparison, "behaviour")"""),
    ("md", """### 3. More often right?

One row per scoring: accuracy before and after (right / n) with 95% Wilson intervals, the change in percentage
points with its exact paired interval, McNemar's exact p with the discordant counts (right only before / right
only after), the detectable change, the unparseable answers of each model (stated-letter scoring only) and the
verdict. A change smaller than the detectable change can go unseen: "no significant change" then means "too few
questions to tell", not "no effect". Below the table: how many questions were left out as contaminated."""),
    ("code", """views.accuracy_table(comparison)"""),
    ("code", """contamination = comparison["accuracy"] and comparison["accuracy"].get("contamination")
print("left out as contaminated:", "no check" if not contamination else
      f"{contamination['excluded']} of {contamination['checked']} ({[h['id'] for h in contamination['items']]})")"""),
    ("md", """The dataset authors' protocol on the first `compare.mcq_protocol_rows` questions: their lenient read and
the strict read of the same answers, with the unparseable counts, the rules that decided the lenient read, and the
published figures for this set (as reported by their sources, not reproduced here) and how the prompt was wrapped."""),
    ("code", """views.protocol_table(comparison)"""),
    ("md", """The further sets, by option likelihood: each set's accuracy before and after, the change, McNemar's p, the
detectable change, the questions left out as contaminated, the estimated T4 minutes and the published figures
(made by generation under their authors' protocols, so context rather than the same measurement). A set that did
not load is listed with why."""),
    ("code", """views.more_sets_table(comparison)"""),
    ("md", """Question by question: the gold letter, each model's most probable option and the letter it stated
("(unparseable)" when none could be read, counted wrong; empty beyond the generated subset)."""),
    ("code", """views.mcq_side_by_side(comparison).head(12)"""),
    ("md", """## What the verdict does and does not mean

The overall verdict is one of four:
- **helped**: accuracy improved under at least one scoring (the headline names which) with a 95% paired
  interval above zero, and no scoring got worse;
- **hurt**: accuracy fell likewise;
- **no evidence of better answers**: accuracy was measured and no such improvement was shown (or the two
  scorings disagree);
- **correctness not measured**: no multiple-choice set (`compare.mcq_source` is null).

"Helped" means: on these multiple-choice questions, with this decoding, the fine-tuned model picked the right
option more often than its base, by more than the question-to-question noise. It does **not** mean the model is
safe or correct on free-text questions, that its reasoning is sound, or that the gain carries over to other
question types; a multiple-choice set measures recognising the right option, not writing it. "No evidence of
better answers" does not mean fine-tuning failed: the model may fit the data better (question 1) and follow the
format better (question 2) without a measurable gain in correctness on this many questions. The CPU profile's
tiny model is the extreme case: its NLL falls on every held-out row, yet it is a random network that answers
nothing, and its verdict reads accordingly."""),
    ("md", """## Figures

The first figure draws every NLL and generation delta with its 95% interval: an interval crossing the vertical
zero line is no evidence either way; green is better, red worse. The accuracy figure shows both scorings with
Wilson intervals and the change in points with its paired interval. The last is chapter 03's training and
held-out loss."""),
    ("code", """%matplotlib inline
views.figures(comparison);"""),
    ("md", """## Side by side

Numbers hide what changed in the text. Each held-out question with its reference answer, the base model's
answer and the fine-tuned model's answer, with the answer's ROUGE-L and completion NLL; the example question
follows with no reference. An empty answer means the reasoning never closed within `max_new_tokens`."""),
    ("code", """views.side_by_side(comparison)"""),
    ("md", """## Results of this chapter

The verdict and headline; for question 1 the fit metric before and after with its delta, 95% interval and `n`;
for question 2 the rates of closed `</think>` and EOS and the repeated 4-gram share before and after; for
question 3 the accuracy before and after under each scoring, the 95% interval of the change, McNemar's p, the
detectable change and the unparseable counts, the questions left out as contaminated, each further set's
likelihood accuracy, the authors' protocol read both ways and the published figures it is set beside. Saved to
`results/04.json` in the run folder."""),
    ("code", """show.record_results(run, "04", compare.key_numbers(comparison))"""),
]
