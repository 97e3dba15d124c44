"""The README's table of helpers you can copy: each one exists, takes plain arguments (never the config
tree or the run folder), and a test calls it."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def listed() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Helpers you can copy"):]
    names = []
    for line in table.splitlines():
        m = re.match(r"\| `([a-z_.]+)`(?: / `([a-z_A-Z]+)`)?", line)
        if m:
            names.append(m.group(1))
            if m.group(2):
                names.append(m.group(1).rsplit(".", 1)[0] + "." + m.group(2))
    return names


def resolve(dotted: str):
    module, _, name = f"r1helpers.{dotted}".rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_table_lists_the_helpers_of_every_stage():
    names = listed()
    assert len(names) >= 60
    for group in ("core.prompts", "data.", "modeling.", "training.", "inference.", "evaluate.", "export."):
        assert any(n.startswith(group) for n in names), group


@pytest.mark.parametrize("dotted", listed())
def test_each_listed_helper_exists_and_takes_plain_arguments(dotted):
    obj = resolve(dotted)
    assert callable(obj), dotted
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    for name, p in params.items():
        annotation = str(p.annotation)
        assert name not in ("cfg", "config", "run"), f"{dotted}({name}): a helper takes plain values"
        assert "Config" not in annotation and "Run" not in annotation.replace("Runner", ""), f"{dotted}({name})"


def test_each_listed_helper_is_called_by_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    missing = [d for d in listed() if not re.search(rf"\b{re.escape(d.rsplit('.', 1)[1])}\(", sources)]
    assert not missing, f"no test calls {missing}"
