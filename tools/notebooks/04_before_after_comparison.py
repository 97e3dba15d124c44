"""Chapter source of notebooks/04_before_after_comparison.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 04 · Before / after comparison

Did fine-tuning change the model, and in which way? This chapter puts the base model and the fine-tuned model
(base + the LoRA adapter from chapter 03) side by side on **held-out** questions: rows of the dataset that
training never saw. Both models get the same prompts, the same decoding settings and the same seed, so the
only difference between the two columns is the adapter.

Two families of measurements answer two different questions:

- **Teacher-forced NLL** (no generation): how probable does each model find the *reference* reasoning and
  answer written in the dataset? This measures how well a model fits the data's style.
- **Generation metrics**: what each model actually writes when asked. Did it close its reasoning block with
  `</think>`, did it stop (EOS) before the token limit, how long are its reasoning and answer, and how close is
  its answer to the reference (ROUGE-L and semantic similarity)?

**What it needs.** The prepared data (chapter 02), the base model's generations (chapter 01) and the trained
adapter (chapter 03). Each is reused from the run folder when it was made with the current settings;
otherwise this notebook rebuilds it first (training included), so it also works when opened alone.

**What it writes.** `finetuned/generations.jsonl` (the fine-tuned model's answers), `compare/comparison.json`
(every number below) and `compare/report.html`, a single page that opens in any browser without a network.
The last cell writes `results/04.json`.

**How long.** On a Kaggle T4, with chapters 01 and 03 done: loading the 8B model in 4-bit takes about
2 minutes, generating the example question and the held-out answers of up to 1,200 tokens several minutes
(roughly 15-25 tokens/s per sequence, in batches planned from the GPU's memory), and scoring 50 held-out rows teacher-forced, once with
the adapter off and once on, a few minutes more: **about 5-10 minutes** in all. These are estimates from
the benchmark numbers, not measurements on a T4. The CPU profile's tiny model takes well under a minute."""),
    ("md", """## The settings this chapter uses

Two config sections decide everything below. `infer` is the decoding: greedy (`do_sample=False`) or sampling
with `temperature`/`top_p`, at most `max_new_tokens` per answer, `batch_size` questions at once (0: as many as
the GPU's memory holds), the generation `path` (chapter 01 explains the choice), the recipe's
`example_questions` plus the first `num_eval_questions` held-out questions. `compare` is the scoring:
`nll_rows` held-out rows scored teacher-forced (0: all), the `embedding_model` for semantic similarity, the
number of `bootstrap_samples` and their `seed`, and the `primary_metric` whose interval gives the verdict."""),
    ("code", """from r1helpers.core import show
from r1helpers.evaluate import compare
from r1helpers.workflow import steps
show.config_table(cfg).filter(regex=r"^(infer|compare)\\.", axis=0)"""),
    ("md", """To change a value, set it on `cfg` before the cells below run, e.g. `cfg.compare.nll_rows = 20` or
`cfg.compare.primary_metric = "answer_nll"`, or pass `overrides={"compare.nll_rows": 20}` to papermill. Every
step reads `cfg` when it runs and compares it with what the run folder was made with, so a changed value is
what this chapter uses: changing `infer` regenerates both models' answers (the comparison must use one
decoding), changing `compare` only rescores."""),
    ("md", """## The inputs: held-out rows and the base model's answers

`steps.prepare` returns the training and held-out splits of chapter 02; `steps.baseline` the base model's
generations of chapter 01 (the example question first, then the held-out questions). Both come from the run
folder when current."""),
    ("code", """prepared = steps.prepare(cfg, run)
baseline = steps.baseline(cfg, run, prepared)
print(len(prepared.eval), "held-out rows;", len(baseline), "questions answered by the base model")"""),
    ("md", """## The fine-tuned model's answers

`steps.FinetunedModel` stands for base + adapter. It loads the weights on first use only, and then the same
loaded model serves both the generation here and the teacher-forced scoring further down: an 8B model is
loaded once in this chapter, not twice. When the run folder already holds current generations and a current
comparison, nothing loads at all (the count printed after the comparison says how many loads happened). `steps.finetuned` generates with exactly the questions and `cfg.infer`
settings the base model had, and on the generation path the base model's generations recorded (same weights,
same KV cache); it prints that path and its batch plan when it generates."""),
    ("code", """tuned_model = steps.FinetunedModel(cfg, run, prepared)  # loads on first use, then shared
tuned = steps.finetuned(cfg, run, prepared, loaded=tuned_model)
show.generations_table(tuned)"""),
    ("md", """A comparison is only fair when both models decoded the same way. Each generation stage recorded its
`infer` settings, its generation path and the weights it ran on (4-bit or 16-bit) in its manifest; the two columns
below must be identical, and `steps.compare` refuses to run when they are not (rerun chapter 01 and this one with
one setting). The batch may differ between the two (the adapter takes a little memory); it changes no setting."""),
    ("code", """import pandas as pd
pd.DataFrame(steps.decoding_used(run))"""),
    ("md", """## What is measured

**Teacher-forced NLL and perplexity.** Each held-out row is fed to the model exactly as in training (prompt,
reference reasoning, `</think>`, reference answer, EOS) and the model's probability of every reference token
is read off in one forward pass, with no generation. The mean negative log-likelihood per token (in nats) is
reported for the reasoning span, for the answer span (including EOS: learning to stop is part of answering)
and for the whole completion; perplexity is `exp(NLL)`. One loaded model scores both sides: with the LoRA
adapter disabled it *is* the base model, so the two scores differ by the adapter alone. Lower means the model
finds the dataset's reasoning and answers more probable, i.e. it fits the data's style better.

**Generation metrics**, on the held-out questions only (the example question has no reference):
- *reasoning block closed*: the model wrote `</think>` and then an answer;
- *EOS reached* / *cut at max_new_tokens*: it stopped by itself, or the token limit cut it off (any answer
  is then partial);
- *empty answer*, *reasoning length* and *answer length* in tokens (lengths have no "better" direction);
- *ROUGE-L F1*: word overlap of the answer with the reference answer, by longest common subsequence;
- *semantic similarity*: cosine similarity of sentence embeddings (`compare.embedding_model`) of answer and
  reference; skipped with a note when that model is not available.

**Intervals and the verdict.** Every metric is computed per question for both models and differenced
(after minus before). Resampling the questions with replacement (`compare.bootstrap_samples` times) gives a
**95% paired bootstrap interval** of the mean difference: how far the delta could move on another draw of
held-out questions. **Win/tie/loss** counts questions where the fine-tuned model was better, equal or worse. A
metric is called *better* or *worse* only when its interval excludes zero, otherwise *no significant change*.
The overall verdict is "helped" only when the **primary metric**'s interval (`compare.primary_metric`, by
default the completion NLL) lies entirely on the better side of zero, "hurt" when on the worse side."""),
    ("code", """comparison = steps.compare(cfg, run, prepared, baseline, tuned, loaded=tuned_model)
print("fine-tuned model loads in this chapter:", tuned_model.loads)
show.lines([comparison["headline"], *comparison["notes"]])"""),
    ("md", """## What the verdict does and does not mean

With the default primary metric, "helped" means: **the fine-tuned model fits the held-out data's reasoning
and answers better** (lower NLL), with a 95% interval that excludes zero. It does **not** mean the model
answers medical questions better. Lower held-out loss is not better answers. In one run of this project a
real small model lowered its NLL on 48 of 48 held-out questions, while its multiple-choice accuracy stayed at
chance and it never once closed `</think>`: it had learned the style of the reasoning traces, not to reason
to a correct, finished answer. The CPU profile's tiny model shows the same pattern in miniature: its NLL falls
on every held-out row while none of its generations closes `</think>`. So read the verdict together with the
generation rows: did `</think>` and EOS
rates go up, did answers get closer to the references? And remember what a small held-out set can show: with
8 generated questions a generation metric's interval is wide, and "no significant change" often means "too
few questions to tell", not "no effect". ROUGE-L and semantic similarity measure closeness to one reference
text; neither checks medical correctness.

The table has one row per metric: before (base), after (fine-tuned), delta, the 95% interval of the delta,
which direction is better, the verdict and win/tie/loss."""),
    ("code", """compare.summary_table(comparison)"""),
    ("md", """## Figures

The first figure shows mean NLL per token for both models and, per question, the base NLL against the
fine-tuned NLL (points below the diagonal improved). The second shows the generation rates and the mean
lengths. The third draws every delta with its 95% interval: an interval crossing the vertical zero line is no
evidence either way; green is better, red worse. The last is the training and held-out loss of chapter 03."""),
    ("code", """%matplotlib inline
compare.figures(comparison);"""),
    ("md", """## Side by side

Numbers hide what changed in the text. Each held-out question with its reference answer, the base model's
answer and the fine-tuned model's answer, with the answer's ROUGE-L and completion NLL; the example question
follows with no reference. An empty answer means the reasoning never closed within `max_new_tokens`."""),
    ("code", """compare.side_by_side(comparison)"""),
    ("md", """## The report

The same tables, figures and answers (with each model's reasoning folded under the answer) are in one HTML
file in the run folder. It has no scripts and no links, plots are embedded, and model text is escaped, so it
is safe to open and to share."""),
    ("code", """print("report:", steps.report_path(run).as_uri())"""),
    ("md", """## Results of this chapter

The verdict, the headline, the primary metric before and after with its delta and 95% interval, the rates of
closed `</think>` and of EOS before and after, and the number of questions behind them; saved to
`results/04.json` in the run folder."""),
    ("code", """show.record_results(run, "04", compare.key_numbers(comparison))"""),
]
