"""Chapter source of notebooks/02_data_preparation.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", """# 02 · Data preparation: from dataset rows to token ids

The recipe fine-tunes on `FreedomIntelligence/medical-o1-reasoning-SFT`: medical questions (`Question`), a long
chain of reasoning (`Complex_CoT`) and a final answer (`Response`). This chapter loads the rows, checks their
columns and fields, cuts the training rows and a held-out split that training never sees, and tokenizes every
example exactly as the trainer will see it. Then it measures the examples against `model.max_seq_length`.

**Needs:** the dataset (from the Hub, a local file, or the bundled sample in the `cpu` profile) and the model's
tokenizer (a few megabytes; the model weights are not loaded here). **Writes:** `data/dataset` (the prepared
splits, token ids included), `data/stats.json` (counts, lengths, every row dropped and why),
`data/manifest.json` and `results/02.json`. If notebook 01 already ran with the same settings, it built these files
and this notebook reuses them. **Time on a Kaggle T4:** about a minute (an estimate): the download of the dataset
the first time, then tokenizing 550 rows on the CPU. Measured on an H200
with the 8B shape's tokenizer and the bundled rows (not a T4; BENCHMARKS.md): 24.0 s."""),
    ("md", """## Loading the rows

The tutorial's call is `load_dataset(source, config_name, split=...)`: a Hub dataset id, with `data.config_name`
(`"en"` here) and `data.split`. A local `.jsonl`, `.json`, `.csv` or `.parquet` file, a folder saved with
`Dataset.save_to_disk`, or the `cpu` profile's bundled sample (`r1helpers/sample`) is read by `data_sources.load_rows`
instead, which names the line of a file that is not valid JSON or not UTF-8 (with `data.lenient = True` it
drops and counts such lines). Either way the three columns the recipe needs are checked next. Their names come
from the config too (`data.question_column`, `data.cot_column`, `data.response_column`), so a dataset with other
names can be used without renaming it."""),
    ("code", """from datasets import load_dataset
from r1helpers import data, data_sources
from r1helpers.core import prompts, show
from r1helpers.modeling import load
d = cfg.data
columns = (d.question_column, d.cot_column, d.response_column)
if data_sources.is_hub_id(d.source):
    rows = load_dataset(d.source, d.config_name, split=d.split)
else:  # a local file or folder, or the bundled sample
    rows, _ = data_sources.load_rows(d.source, split=d.split, lenient=d.lenient, columns=None)
data.check_columns(rows.column_names, columns, d.source)
print(f"{len(rows)} rows from {d.source}; columns: {rows.column_names}")"""),
    ("md", """One raw row, as the source holds it (long values cut at 600 characters; the last column gives their full
length). The reasoning is usually longer than the answer, often several times, and it is most of what the model
learns."""),
    ("code", "show.raw_row(rows[0])"),
    ("md", """A misspelled column is the most common reason a new dataset fails. `data.column_problems` lists the wanted
columns that are missing, each with the close spelling the data has; `load_rows` raises an error with the same text
(and the full list of columns), before anything is tokenized. Here, first the real columns, then a typo:"""),
    ("code", """print("this dataset's columns:", data.column_problems(rows.column_names, columns) or "all three are there")
typo = ("Question", "Complex_COT", "Response")  # a made-up misspelling, to show the message
print("demonstration, with", typo, "->", data.column_problems(rows.column_names, typo))"""),
    ("md", """## The training text, as the tutorial formats it

The tutorial maps a formatting function over the rows: the prompt of notebook 01 (preamble, instruction,
question, `### Response:` and `<think>`), then the reasoning, `</think>`, the answer and the EOS token as text.
`prompts.build_training_text` is that function; here it is applied with `.map` to the first rows, to read one.
The preparation below builds the same text and tokenizes it in two parts (prompt, then the rest, with EOS added as
an id), so that the inference prompt is an exact token prefix of every training example."""),
    ("code", """tokenizer = load.load_tokenizer(cfg.model.name, revision=cfg.model.revision, pad_token=cfg.model.pad_token)
formatted = rows.select(range(min(3, len(rows)))).map(lambda row: {"text": prompts.build_training_text(
    row[d.question_column], row[d.cot_column], row[d.response_column], tokenizer.eos_token)})
print(formatted[0]["text"][:1500])"""),
    ("md", """## Training rows and held-out rows

`data.select_rows` (called by `data_stage.prepare` below) keeps the rows in the source's order and:

- takes the first `data.train_rows` usable rows (500 in the recipe) for training, exactly the rows the seed recipe
  trains on;
- takes the next `data.eval_rows` rows (50) as the held-out split, which notebook 04 scores both models on;
- removes from the held-out split any row whose question, ignoring case and spacing, is also a training question.
  A model scored on a question it was trained on would look better than it is, so the two splits share no question;
- refuses a row with an empty field or a row that repeats another, naming the row; with `data.lenient = True` it
  drops and counts them instead. `lenient` also drops lines that are not valid JSON or not UTF-8.

`data_stage.prepare(cfg, run)` runs the whole preparation (load, select, tokenize, measure) and saves it in the run folder,
or reuses the saved splits when they were made with the same `model.name`, `model.max_seq_length` and `data`
settings. It takes the tokenizer, loaded once here with `load_tokenizer` (which also sets a pad token, see below)."""),
    ("code", """from r1helpers.workflow import data_stage
prepared = data_stage.prepare(cfg, run, tokenizer=tokenizer)  # reuses data/ when made with these settings
show.lines(prepared.stats["report"])"""),
    ("code", """train_src, held_src = prepared.train["source_row"], prepared.eval["source_row"]
print("training rows:", len(train_src), "| source rows", train_src[:3], "...", train_src[-3:])
print("held-out rows:", len(held_src), "| source rows", held_src[:3], "...", held_src[-3:])
print("questions in both splits:", len(data.shared_questions(list(prepared.train), list(prepared.eval))))"""),
    ("md", """## One training example, as the trainer sees it

Each example is the prompt of notebook 01, then a newline, the reference reasoning, `</think>`, the answer, and
the EOS token. `prompts.encode_example` tokenizes the prompt and the rest separately and joins the ids, then appends
EOS as an id (not as text, which a tokenizer might split), so that the inference prompt is always an exact prefix of
the training ids. `data.show_example` does the same and decodes the ids back to text, marking the boundary between
the prompt and the completion with `⟦▲ prompt · completion ▼⟧` and showing the last token as
`⟨EOS ... id N⟩`. The first token is BOS, added by the tokenizer."""),
    ("code", """row = prepared.train[0]
example = data.show_example(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
print(example.text)"""),
    ("code", """print("the same ids as the prepared row:", example.input_ids == row["input_ids"])
print(f"prompt {example.prompt_tokens} + completion {example.completion_tokens} = {len(example.input_ids)} tokens")
print(f"last id {example.eos_id}; tokenizer.eos_token_id {tokenizer.eos_token_id}")
print("columns the trainer receives:", prepared.trainer_columns("train").column_names)"""),
    ("md", """### What the loss covers

The trainer receives only the `input_ids` column. Given token ids without a `labels` or `completion_mask` column,
TRL's `SFTTrainer` uses a copy of the ids as labels, and its collator sets the padding positions to -100 so they
count for nothing. `training/sft.py` does not set `completion_only_loss`, whose default turns it on only for
datasets with `prompt` and `completion` columns. So **this project does not mask the prompt**: as in the seed
recipe, the loss is the mean over every token of the example (each predicted from the tokens before it): prompt,
reasoning, `</think>`, answer and EOS.

What that means in practice: the preamble and the instruction are the same in every row and soon cost almost
nothing to predict; the question is different in every row, and the model is trained to predict it too. Both count
in the mean, so the training loss is not the loss on the reasoning and answer. Notebook 04 scores the held-out rows
on the completion only, which is the number to compare. To train on the completion alone, add a `completion_mask`
column (0 for the first `prompt_length` tokens, which each prepared row stores, 1 after), pass it to the trainer
with `input_ids` (`Prepared.trainer_columns`) and set `completion_only_loss=True` in `sft_config`."""),
    ("md", """## Lengths against `max_seq_length`

Every example is counted in tokens (prompt + reasoning + answer + EOS) before anything is dropped, so the table and
the histogram show what `model.max_seq_length` (the dashed line) cuts off: `over_max_seq_length` counts the rows
past it. The median and the 95th percentile matter for memory and speed in training: a padded batch is as long as
its longest example, and the batch plan of notebook 03 is sized from these lengths."""),
    ("code", "show.length_table(prepared.stats)"),
    ("code", "show.png(show.length_histogram(prepared.stats))  # as an image, so that headless runs keep it too"),
    ("md", """`data.overlong` says what happens to a row longer than `model.max_seq_length`:

- `"drop"` (the default) leaves it out and records its source row. A dropped row costs one example;
- `"truncate"` keeps its first `max_seq_length` tokens. The row then loses the end of its answer and its EOS: the
  model trains on an answer that never ends. Use it only when too many rows are long;
- `"error"` stops here, naming the row, so that you decide.

Raising `model.max_seq_length` keeps long rows whole, at the cost of memory in training."""),
    ("code", """print(f"data.overlong = {cfg.data.overlong!r}; model.max_seq_length = {cfg.model.max_seq_length}")
print("source rows over the limit:", prepared.stats["raw"]["overlong"])"""),
    ("md", """## Padding is not EOS

Batches pad shorter examples to a common length with the pad token. The pad token must differ from EOS:

- collators that build labels by token id, such as transformers' `DataCollatorForLanguageModeling`, set every
  position holding the pad id to -100; if pad were EOS, the EOS ending every example would drop out of the loss, and
  the model would never learn to stop;
- code that finds padding by its id (attention masks rebuilt from `input_ids != pad_token_id`, or stripping
  trailing padding after generation, as `generate` does for answers cut at the limit) would mistake a real EOS for
  padding.

Llama-3 tokenizers often leave pad unset, and a common fix sets it to EOS. `load.ensure_pad_token` (called by
`load_tokenizer`) uses `model.pad_token` when it is set (it must be an existing token that is neither EOS nor BOS);
otherwise it keeps a pad token that already differs from EOS, then tries the Llama-3 tokenizer's own reserved
tokens (`load.PAD_CANDIDATES`), then any other existing special token that is not EOS or BOS (SmolLM2's
`<|endoftext|>`), so that the embeddings need no new row, which 4-bit weights make costly. When none exists it
stops with an error that names `model.pad_token`."""),
    ("code", """print(f"EOS: {tokenizer.eos_token!r} id {tokenizer.eos_token_id}")
print(f"pad: {tokenizer.pad_token!r} id {tokenizer.pad_token_id}")
print(load.ensure_pad_token(tokenizer))
print("every prepared example ends with EOS:", prepared.stats["eos_ends_every_example"])"""),
    ("md", """## Results

The counts a reader checks before training: rows trained and held out, rows dropped and why, rows over the length
limit, and the median, 95th percentile and longest training example in tokens. Written to `results/02.json`."""),
    ("code", 'show.record_results(run, "02", data.summary(prepared.stats))'),
]
