"""Chapter source of notebooks/00_setup.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", '# 00 · Setup and secrets\n\nChecks the machine, picks the backend (Unsloth or transformers + peft) and dtype with the reason, finds the Hugging Face token and W&B key without showing them, and records the resolved config in the run folder.'),
    ("code", "from r1helpers.core import show\nfrom r1helpers.core.runs import read_json\nenv = read_json(run.root / 'environment.json')\nshow.environment_table(env)"),
    ("code", 'show.config_table(cfg)'),
]
