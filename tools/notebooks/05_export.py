"""Chapter source of notebooks/05_export.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", '# 05 · Export\n\nThe adapter, a merged 16-bit model and GGUF files in the run folder, each checked; pushed to the Hub only with a token and `export.hub_repo`.'),
    ("code", 'from r1helpers.workflow import export\nexported = export.export(cfg, run)\nexport.summary_table(exported)'),
]
