"""Helpers you can copy: each one, extracted with what it needs into a single .py file, runs where
`r1helpers` cannot be imported and gives the same result as the package's own.

`copy_of(helper)` writes that file the way a reader would copy by hand: the helper's source, then
(recursively) every function, class and module-level constant of r1helpers it uses, each from its own
module; third-party and standard-library names keep the import line their module has. A use of another
r1helpers module as a namespace (`prompts.build_prompt(...)`) becomes a use of the copied name
(`build_prompt(...)`); a function-local `from r1helpers... import x` is dropped and `x` copied.
Annotations are left as text (`from __future__ import annotations`), so a type named only in one is
not copied. The file is then run by a fresh interpreter whose `r1helpers` is a package that raises
ImportError, so anything left pointing into the package fails.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _is_ours(module_name: str | None) -> bool:
    return bool(module_name) and (module_name == "r1helpers" or module_name.startswith("r1helpers."))


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (left as text under `from __future__ import annotations`)."""
    skip: set[int] = set()

    def mark(node):
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                      node.args.kwarg):
                if a is not None:
                    mark(a.annotation)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
    return skip


@functools.cache
def _top_level(module: types.ModuleType) -> dict[str, ast.stmt]:
    """Each name a module binds at top level -> the statement (import, assignment, def, class) that binds it."""
    tree = ast.parse(inspect.getsource(module))
    bound: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for a in stmt.names:
                bound[(a.asname or a.name).split(".")[0]] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        bound[n.id] = stmt
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound[stmt.name] = stmt
    return bound


class Copier:
    """Collects one helper and what it needs, dependencies first."""

    def __init__(self):
        self.imports: list[str] = []
        self.blocks: list[str] = []
        self.copied: dict[str, tuple[str, str]] = {}  # name in the copy -> (its module, its source)

    # -- one piece of source from `module`: rewrite its r1helpers namespaces, copy what it names -------------
    def _take(self, source: str, module: types.ModuleType) -> str:
        source = textwrap.dedent(source)
        tree = ast.parse(source)
        skip = _annotation_nodes(tree)
        glob = vars(module)
        edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end_line, end_col, replacement)
        needed: list[tuple[str, types.ModuleType]] = []  # (name in `module`, module to look it up in)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and _is_ours(node.module) and node.level == 0:
                # a function-local import from the package: dropped (the names are copied instead)
                src = importlib.import_module(node.module)
                for a in node.names:
                    if a.asname and a.asname != a.name:
                        raise NotImplementedError(f"local import {a.name} as {a.asname}")
                    needed.append((a.name, src))
                edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, "pass"))
            elif isinstance(node, ast.Import) and any(_is_ours(a.name) for a in node.names):
                raise NotImplementedError(f"local `import r1helpers...` in {module.__name__}")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and isinstance(glob.get(node.value.id), types.ModuleType) and _is_ours(glob[node.value.id].__name__):
                # prompts.build_prompt -> build_prompt
                needed.append((node.attr, glob[node.value.id]))
                v = node.value
                edits.append((v.lineno, v.col_offset, v.end_lineno, v.end_col_offset + 1, ""))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                needed.append((node.id, module))
        for name, where in needed:
            self.need(name, where)
        lines = [line.encode() for line in source.splitlines(keepends=True)]
        for line, col, end_line, end_col, new in sorted(edits, reverse=True):
            assert line == end_line, "a rewritten expression spans lines"
            b = lines[line - 1]
            lines[line - 1] = b[:col] + new.encode() + b[end_col:]
        return b"".join(lines).decode()

    def need(self, name: str, module: types.ModuleType) -> None:
        """Make `name`, as `module` sees it, available in the copy."""
        glob = vars(module)
        if name not in glob:
            return  # a builtin, or a local variable, parameter or comprehension name
        if isinstance(glob[name], types.ModuleType) and _is_ours(glob[name].__name__):
            return  # a namespace of ours: its attributes were rewritten and copied by _take
        stmt = _top_level(module).get(name)
        if stmt is None:
            raise NotImplementedError(f"{module.__name__}.{name} is bound at run time")
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if isinstance(stmt, ast.ImportFrom) and _is_ours(stmt.module):
                # from r1helpers.x import name: copy it from where it is defined
                original = next(a.name for a in stmt.names if (a.asname or a.name) == name)
                if original != name:
                    raise NotImplementedError(f"{module.__name__} imports {original} as {name}")
                self.need(name, importlib.import_module(stmt.module))
                return
            line = ast.unparse(stmt)
            if stmt.__class__ is ast.ImportFrom:
                line = ast.unparse(ast.ImportFrom(module=stmt.module, level=0,
                                                  names=[a for a in stmt.names if (a.asname or a.name) == name]))
            if line.startswith("from __future__"):
                return
            if line not in self.imports:
                self.imports.append(line)
            return
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            source = inspect.getsource(glob[name])  # with its decorators
        else:
            source = ast.get_source_segment(inspect.getsource(module), stmt)
        if name in self.copied:
            if self.copied[name][1] != source:  # the same constant written in two modules is one constant
                raise NotImplementedError(f"two different {name}: in {self.copied[name][0]} and {module.__name__}")
            return
        self.copied[name] = (module.__name__, source)
        self.blocks.append(self._take(source, module))

    def text(self) -> str:
        return "\n".join(["from __future__ import annotations", "", *self.imports, "", "",
                          *(b.rstrip() + "\n\n" for b in self.blocks)])


def copy_of(helper) -> tuple[str, Copier]:
    """One .py file holding `helper` and everything of r1helpers it needs (see the module's notes)."""
    copier = Copier()
    copier.need(helper.__name__, sys.modules[helper.__module__])
    return copier.text(), copier


BLOCKER = """
import importlib.abc, sys

class NoR1helpers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "r1helpers" or name.startswith("r1helpers."):
            raise ImportError("r1helpers is not installed here: the copy must stand alone")
        return None

sys.meta_path.insert(0, NoR1helpers())
"""


def run_copy(tmp_path: Path, helper, call: str, setup: str = "") -> object:
    """Write the copy of `helper` to tmp_path/copied.py, run `setup` and then `call` (an expression over the
    copy's names) in a fresh interpreter where `import r1helpers` fails (a meta-path finder ahead of the
    editable install's), and return the call's value through JSON."""
    text, _ = copy_of(helper)
    (tmp_path / "copied.py").write_text(text)
    script = (BLOCKER + f"sys.path.insert(0, {str(tmp_path)!r})\n"
              "try:\n    import r1helpers\nexcept ImportError:\n    pass\n"
              "else:\n    raise SystemExit('r1helpers was importable')\n"
              "import json\nfrom copied import *\n" + textwrap.dedent(setup)
              + f"\nprint(json.dumps({call}, default=repr))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, f"the copy failed:\n{out.stderr[-3000:]}\n--- copied.py ---\n{text[:3000]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def same(value) -> object:
    """`value` as it comes back through JSON (tuples as lists, other objects as repr)."""
    return json.loads(json.dumps(value, default=repr))


def test_build_prompt_copied(tmp_path):
    from r1helpers.core.prompts import build_prompt

    question = "  What causes scurvy?\n"
    assert run_copy(tmp_path, build_prompt, f"build_prompt({question!r})") == build_prompt(question)


def test_sft_arguments_copied(tmp_path):
    from r1helpers.training.sft import sft_arguments

    kwargs = dict(output_dir="out", per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=2e-4,
                  warmup_steps=5, max_steps=60, optim="adamw_8bit", weight_decay=0.01, lr_scheduler_type="linear",
                  seed=3407, logging_steps=10, eval_steps=0, save_steps=20, max_seq_length=2048, padding_free=True,
                  gradient_checkpointing="unsloth", mixed_precision="float16", report_to=["wandb"])
    assert run_copy(tmp_path, sft_arguments, f"sft_arguments(**{kwargs!r})") == same(sft_arguments(**kwargs))


def test_grade_mcq_generation_copied(tmp_path):
    from r1helpers.evaluate.accuracy import grade_mcq_generation

    row = {"question": "Which is the most likely diagnosis?", "answer_idx": "B", "answer": "Iron deficiency anemia",
           "options": {"A": "Anemia of chronic disease", "B": "Iron deficiency anemia", "C": "Beta-thalassemia minor",
                       "D": "Vitamin B12 deficiency"}}
    answers = ["Low ferritin...</think>\nThe answer is B.", "</think>\nIron deficiency anemia.",
               "</think>\n(C) Beta-thalassemia minor", "still thinking about A", "</think>\nno idea", ""]
    call = f"[grade_mcq_generation(a, {row!r}) for a in {answers!r}]"
    assert run_copy(tmp_path, grade_mcq_generation, call) == same([grade_mcq_generation(a, row) for a in answers])


def test_column_problems_copied(tmp_path):
    from r1helpers.data import column_problems

    names = ["question", "Complex_COT", "answer_text"]
    assert run_copy(tmp_path, column_problems, f"column_problems({names!r})") == column_problems(names)


WORD_TOKENIZER = """
class WordTokenizer:
    # the calls show_example makes of a tokenizer, over a vocabulary of whitespace-separated words
    bos_token, eos_token = "<s>", "</s>"

    def __init__(self):
        self.vocab = {"<s>": 0, "</s>": 1}

    @property
    def eos_token_id(self):
        return self.vocab[self.eos_token]

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False):
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids if not (skip_special_tokens and i < 2))


tok = WordTokenizer()
"""


def test_show_example_copied(tmp_path):
    import dataclasses

    from r1helpers.data import show_example

    example = ("What causes scurvy?", "Vitamin C is needed for collagen.", "Vitamin C deficiency.")
    call = f"dataclasses.asdict(show_example(tok, *{example!r}))"
    here: dict = {}
    exec(WORD_TOKENIZER, here)
    got = run_copy(tmp_path, show_example, call, setup="import dataclasses\n" + WORD_TOKENIZER)
    assert got == same(dataclasses.asdict(show_example(here["tok"], *example)))


TINY_MODEL = """
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({model_dir!r})
model = AutoModelForCausalLM.from_pretrained({model_dir!r})
"""


@pytest.mark.slow
def test_generate_copied(tmp_path, tiny_model_dir):
    """Generation copied with what it needs (today: planning, the GPU's memory, hardware checks and the prompt,
    from four modules)."""
    from r1helpers.inference.generate import generate

    setup = TINY_MODEL.format(model_dir=str(tiny_model_dir))
    questions = ["What causes scurvy?", "Which vitamin deficiency causes night blindness in children?"]
    call = (f"[{{k: v for k, v in r.items() if k != 'batch_seconds'}} for r in generate(model, tok, {questions!r}, "
            "max_new_tokens=8, batch_size=2, progress=False)]")
    here: dict = {}
    exec(setup, here)
    expected = [{k: v for k, v in r.items() if k != "batch_seconds"}
                for r in generate(here["model"], here["tok"], questions, max_new_tokens=8, batch_size=2, progress=False)]
    assert run_copy(tmp_path, generate, call, setup=setup) == same(expected)


def test_the_copies_run_where_r1helpers_cannot_be_imported(tmp_path):
    """The interpreter that runs a copy cannot import the package, editable install or not."""
    from r1helpers.data import show_example

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = BLOCKER + "import r1helpers.core.prompts\n"
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0 and "the copy must stand alone" in out.stderr
    assert "import r1helpers" not in copy_of(show_example)[0]
