"""Helpers for the notebook series that fine-tunes DeepSeek-R1-Distill-Llama-8B on medical reasoning.

Heavy libraries (torch, unsloth, trl, wandb) are imported inside the functions that
need them, so `import r1helpers` works on any machine.
"""

from r1helpers.core.config import Config, ConfigError, load_config
from r1helpers.workflow.session import start

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "start", "__version__"]
