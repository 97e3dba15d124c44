"""Find the Hugging Face token and the W&B key without ever showing them.

Sources, in order: environment variables, Kaggle secrets, Colab user data, a
`.env` file (current folder, then the repository root), and, only when a person
is at the keyboard, a hidden prompt. Found values go into this process's
environment (where huggingface_hub and wandb look) and nowhere else: never into a
config, a log, a run folder or a notebook's output.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

SECRETS = {
    # name in os.environ: other names people use for it
    "HF_TOKEN": ("HF_TOKEN", "HUGGINGFACE_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN"),
    "WANDB_API_KEY": ("WANDB_API_KEY", "WANDB_KEY", "WANDB_TOKEN"),
}


@dataclass
class SecretsReport:
    """Where each secret came from (never its value), and which sources were tried."""

    found: dict[str, str] = field(default_factory=dict)
    tried: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for name in SECRETS:
            if name in self.found:
                out.append(f"{name}: found in {self.found[name]}")
            else:
                out.append(f"{name}: not found (tried {', '.join(self.tried)})")
        return out


def _from_env(alias: str) -> str | None:
    return os.environ.get(alias) or None


def _from_kaggle(alias: str) -> str | None:
    if "KAGGLE_KERNEL_RUN_TYPE" not in os.environ:
        return None
    try:
        from kaggle_secrets import UserSecretsClient

        return UserSecretsClient().get_secret(alias) or None
    except Exception:
        return None


def _from_colab(alias: str) -> str | None:
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab import userdata

        return userdata.get(alias) or None
    except Exception:
        return None


def _dotenv_files() -> list[Path]:
    here = Path.cwd()
    return [p / ".env" for p in (here, *here.parents) if (p / ".env").is_file()][:2]


def _read_dotenv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        out[key.strip()] = value.strip().strip("'\"")
    return out


def _interactive() -> bool:
    if os.environ.get("R1HELPERS_HEADLESS") == "1" or os.environ.get("CI"):
        return False
    return sys.stdin is not None and sys.stdin.isatty()


def load_secrets(ask: bool | None = None) -> SecretsReport:
    """Put HF_TOKEN and WANDB_API_KEY into os.environ where a source has them; report where."""
    report = SecretsReport()
    dotenv = {}
    for path in _dotenv_files():
        dotenv = {**_read_dotenv(path), **dotenv}
    sources = [("environment", _from_env), ("Kaggle secrets", _from_kaggle), ("Colab user data", _from_colab),
               (".env file", dotenv.get)]
    report.tried = [name for name, _ in sources]
    for name, aliases in SECRETS.items():
        for source, get in sources:
            value = next((v for v in (get(a) for a in aliases) if v), None)
            if value:
                os.environ[name] = value
                report.found[name] = source
                break
    if ask is None:
        ask = _interactive()
    if ask:
        import getpass

        report.tried.append("prompt")
        for name in SECRETS:
            if name not in report.found:
                value = getpass.getpass(f"{name} (Enter to skip): ").strip()
                if value:
                    os.environ[name] = value
                    report.found[name] = "prompt"
    return report


def secret_values() -> list[str]:
    """The secrets now set, so that outputs can be checked for them (tests, scrubbing)."""
    return [v for v in (os.environ.get(n) for n in SECRETS) if v]
