"""Chapter source of notebooks/03_lora_training.ipynb (see tools/build_notebooks.py)."""

CELLS = [
    ("md", '# 03 · LoRA training\n\nSupervised fine-tuning with TRL\'s SFTTrainer and the recipe\'s settings; resumes from the latest checkpoint in the run folder. With `overrides={"train.processes": 2}` (0: every visible GPU) it trains under PyTorch DDP instead, one process per GPU started by torchrun, with transformers + peft and the same effective batch; their output appears here as it comes, and rank 0 writes the run folder.'),
    ("code", 'from r1helpers import distributed\nfrom r1helpers.core import show\nfrom r1helpers.workflow import steps\nprepared = steps.prepare(cfg, run)'),
    ("code", 'result = distributed.ensure_trained_anywhere(cfg, run, prepared)\nresult.metrics'),
    ("code", 'show.loss_curve(result.log_history);'),
]
