"""The README's table of helpers you can copy: each one exists, takes plain arguments (never the config
tree or the run folder), and a test calls it."""

from __future__ import annotations

import ast
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


def test_each_helper_is_listed_once():
    names = listed()
    assert sorted({n for n in names if names.count(n) > 1}) == []


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


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of names and attributes, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def called_objects(source: str) -> list:
    """The r1helpers objects that `source` calls: a name imported from r1helpers called (`generate(...)`,
    `infer.generate(...)`, `r1helpers.inference.generate.generate(...)`), never a method of some other
    object (`model.generate(...)`). Imports anywhere in the file count for the whole file."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # local name -> r1helpers dotted path
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and (node.module == "r1helpers" or node.module.startswith("r1helpers.")):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "r1helpers" or a.name.startswith("r1helpers."):
                    if a.asname:
                        names[a.asname] = a.name
                    else:
                        names["r1helpers"] = "r1helpers"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head not in names:
            continue
        path = names[head] + ("." + rest if rest else "")
        obj = _resolve_path(path)
        if obj is not None:
            found.append(obj)
    return found


def _resolve_path(path: str):
    """The object at `r1helpers.x.y.z` (a module attribute, or a submodule), None if there is none."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def uncalled(helpers: list[str], sources: list[str]) -> list[str]:
    called = [obj for source in sources for obj in called_objects(source)]
    return [d for d in helpers if not any(resolve(d) is obj for obj in called)]


def test_each_listed_helper_is_called_by_a_test():
    sources = [p.read_text() for p in sorted((ROOT / "tests").glob("test_*.py")) if p.name != Path(__file__).name]
    missing = uncalled(listed(), sources)
    assert not missing, f"no test calls {missing}"


def test_a_method_of_the_same_name_is_not_a_call_of_the_helper():
    helper = ["inference.generate.generate"]
    assert uncalled(helper, ["out = model.generate(ids)\n"]) == helper
    assert uncalled(helper, ["generate(model, tok, qs)\n"]) == helper  # never imported
    for source in ("from r1helpers.inference.generate import generate\ngenerate(model, tok, qs)\n",
                   "from r1helpers.inference import generate as infer\ninfer.generate(model, tok, qs)\n",
                   "import r1helpers.inference.generate\nr1helpers.inference.generate.generate(m, t, q)\n"):
        assert uncalled(helper, [source]) == [], source
