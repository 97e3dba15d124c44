"""Chapter source of notebooks/02_data_preparation.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", '# 02 · Data preparation\n\nLoads the dataset, checks its columns, cuts the training rows and a held-out split that training never sees, tokenizes every example exactly as the trainer will see it and counts rows longer than `max_seq_length`.'),
    ("code", "from r1helpers.core import show\nfrom r1helpers.workflow import steps\nprepared = steps.prepare(cfg, run)\nshow.lines(prepared.stats['report'])"),
    ("code", 'show.length_table(prepared.stats)'),
    ("code", 'show.length_histogram(prepared.stats);'),
    ("code", "print(prepared.train[0]['text'])"),
]
