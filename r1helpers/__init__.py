"""Helpers for the notebook series that fine-tunes DeepSeek-R1-Distill-Llama-8B on medical reasoning.

Layers (checked by import-linter, see pyproject.toml):
- `r1helpers.core`: config and recipes, prompts, the run folder, secrets, hardware facts;
- stages, plain helpers you can copy: `data`, `modeling`, `training`, `inference`, `evaluate`, `export`;
- orchestration: `workflow` (stage runners over the run folder), `pipeline`, `distributed`, `kaggle`;
- `tools`: laptop-side commands (benchmark, Kaggle build and push).

Heavy libraries (torch, unsloth, trl, wandb) are imported inside the functions that
need them, so `import r1helpers` works on any machine.
"""

from r1helpers.core.config import Config, ConfigError, load_config
from r1helpers.kaggle import setup
from r1helpers.workflow.session import start

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "setup", "start", "__version__"]
