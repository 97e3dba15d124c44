"""Chapter source of notebooks/01_baseline_inference.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", "# 01 · Baseline inference\n\nThe base model answers the recipe's example question and the first held-out questions with the same prompt the fine-tuned model will get, before any training."),
    ("code", 'from r1helpers.core import show\nfrom r1helpers.workflow import steps\nprepared = steps.prepare(cfg, run)'),
    ("code", 'baseline = steps.baseline(cfg, run, prepared)\nshow.generations_table(baseline)'),
]
