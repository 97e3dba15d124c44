"""The command-line options every entry point shares, so `--set` means the same everywhere."""

from __future__ import annotations

import argparse
import os
from typing import Any

from r1helpers.core.config import ConfigError


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set train.max_steps=30` pairs; values are read as YAML scalars (30, true, null, [a, b])."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        out[key.strip()] = value
    return out


def config_arguments(description: str | None) -> argparse.ArgumentParser:
    """The options every entry point shares, so `--set` means the same everywhere."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=os.environ.get("R1HELPERS_RUN_DIR", "runs/default"))
    p.add_argument("--profile", default="auto", help="auto | seed | cpu")
    p.add_argument("--config", default=None, help="YAML file of field overrides")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one field")
    return p

