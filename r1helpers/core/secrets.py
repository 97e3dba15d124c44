"""Find the Hugging Face token and the W&B key without ever showing them.

Sources, in order: environment variables, Kaggle secrets, Colab user data, a `.env` file, and, only when a
person is at the keyboard, a hidden prompt. Found values go into this process's environment and nowhere else.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from r1helpers.core.kaggle_paths import on_kaggle
from r1helpers.core.hardware import headless

SECRETS = {
    # name in os.environ: other names people use for it
    "HF_TOKEN": ("HF_TOKEN", "HUGGINGFACE_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN",
                 "Hugging_Face_Token"),  # the last: the label the tutorial gives its Kaggle secret
    "WANDB_API_KEY": ("WANDB_API_KEY", "WANDB_KEY", "WANDB_TOKEN", "wandb"),  # wandb: the tutorial's Kaggle secret
}
# What each secret unlocks, shown when it is missing.
PURPOSE = {
    "HF_TOKEN": "gated models and pushing to the Hub",
    "WANDB_API_KEY": "online W&B logging (without it W&B logs offline)",
}
DOTENV_ENV = "R1HELPERS_DOTENV"  # an explicit .env file, checked before the folder search

Getter = Callable[[str], "str | None"]


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
                out.append(f"{name}: not found, needed only for {PURPOSE[name]}; tried {'; '.join(self.tried)}")
        return out


def _from_env(alias: str) -> str | None:
    return os.environ.get(alias) or None


def _from_kaggle(alias: str) -> str | None:
    if not on_kaggle():
        return None
    try:
        from kaggle_secrets import UserSecretsClient

        return UserSecretsClient().get_secret(alias) or None
    except Exception:  # not attached to this notebook, or switched off: both mean "not here"
        return None


def _on_colab() -> bool:
    return "google.colab" in sys.modules


def _from_colab(alias: str) -> str | None:
    if not _on_colab():
        return None
    try:
        from google.colab import userdata

        return userdata.get(alias) or None
    except Exception:  # no such secret, or notebook access not granted
        return None


def dotenv_files(start: Path | None = None) -> list[Path]:
    """`$R1HELPERS_DOTENV`, then `.env` in the folder and its parents (nearest first, two at most: a
    notebook's working folder and the repository above it)."""
    explicit = os.environ.get(DOTENV_ENV)
    out = [Path(explicit).expanduser()] if explicit and Path(explicit).expanduser().is_file() else []
    here = (start or Path.cwd()).resolve()
    return out + [p / ".env" for p in (here, *here.parents) if (p / ".env").is_file()][:2]


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=value lines; `export`, quotes and trailing ` # comments` (on unquoted values) are allowed."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"') and value[1:].find(value[0]) >= 0:
            value = value[1 : 1 + value[1:].find(value[0])]
        else:
            value = value.split(" #", 1)[0].strip()
        out[key.strip()] = value
    return out


def _dotenv_values(files: list[Path]) -> dict[str, str]:
    """The values of these .env files, the nearest winning."""
    values: dict[str, str] = {}
    for path in reversed(files):
        values.update(read_dotenv(path))
    return values


def _sources(files: list[Path]) -> list[tuple[str, str, Getter]]:
    """(label in the report, what was looked at, getter) in priority order."""
    dotenv = _dotenv_values(files)
    where = ", ".join(str(p) for p in files) or f"no .env in the working folder or its parents, ${DOTENV_ENV} unset"
    return [
        ("environment", "environment variables", _from_env),
        ("Kaggle secrets", "Kaggle secrets" + ("" if on_kaggle() else " (not a Kaggle kernel)"), _from_kaggle),
        ("Colab user data", "Colab user data" + ("" if _on_colab() else " (not Colab)"), _from_colab),
        (".env file", f".env file ({where})", dotenv.get),
    ]


def _interactive() -> bool:
    """A person can answer a prompt: a terminal, or a Jupyter front end that accepts input (papermill,
    nbclient and Kaggle's "Save & Run All" do not)."""
    if headless() or os.environ.get("CI") or os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Batch":
        return False
    kernel = getattr(sys.modules.get("ipykernel.kernelbase"), "Kernel", None)
    if kernel is not None and kernel.initialized():
        return bool(getattr(kernel.instance(), "_allow_stdin", False))
    return sys.stdin is not None and sys.stdin.isatty()


def _prompt(name: str) -> str | None:
    import getpass

    try:
        return getpass.getpass(f"{name} for {PURPOSE[name]} (Enter to skip): ").strip() or None
    except Exception:  # the front end refused input after all (StdinNotImplementedError, EOFError)
        return None


def load_secrets(ask: bool | None = None, aliases: Mapping[str, tuple[str, ...]] = SECRETS) -> SecretsReport:
    """Put HF_TOKEN and WANDB_API_KEY into os.environ where a source has them; report where, never what."""
    report = SecretsReport()
    sources = _sources(dotenv_files())
    report.tried = [looked for _, looked, _ in sources]
    for name, names in aliases.items():
        for label, _, get in sources:
            value = next((v for v in (get(a) for a in names) if v), None)
            if value:
                os.environ[name] = value
                report.found[name] = label
                break
    missing = [name for name in aliases if name not in report.found]
    if missing and (_interactive() if ask is None else ask):
        report.tried.append("a hidden prompt")
        for name in missing:
            value = _prompt(name)
            if value:
                os.environ[name] = value
                report.found[name] = "prompt"
    return report
