"""Chapter source of notebooks/04_before_after_comparison.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", '# 04 · Before / after comparison\n\nDid fine-tuning help? The base and the fine-tuned model on held-out questions (never trained on), with the same prompts, decoding settings and seed. Teacher-forced NLL of the reference reasoning and answer needs no generation; the generations are checked for a closed reasoning block, EOS, lengths, ROUGE-L and semantic similarity to the reference. Each delta has a 95% paired bootstrap interval, and a metric is called *better* or *worse* only when it excludes zero. The run folder gets `compare/comparison.json` and `compare/report.html`, which opens in any browser.'),
    ("code", 'from r1helpers.core import show\nfrom r1helpers.evaluate import compare\nfrom r1helpers.workflow import steps\nprepared = steps.prepare(cfg, run)\nbaseline = steps.baseline(cfg, run, prepared)\ntuned = steps.finetuned(cfg, run, prepared)'),
    ("code", "comparison = steps.compare(cfg, run, prepared, baseline, tuned)\nshow.lines([comparison['headline'], *comparison['notes']])"),
    ("code", 'compare.summary_table(comparison)'),
    ("code", 'compare.figures(comparison);'),
    ("code", 'compare.side_by_side(comparison)'),
    ("code", "print('report:', steps.report_path(run).as_uri())"),
]
