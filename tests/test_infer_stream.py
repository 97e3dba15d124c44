"""Progress and token streaming: what a person sees while generating, and that it changes nothing."""

from __future__ import annotations

import pytest

from r1helpers.inference import generate as infer
from r1helpers.core.config import load_config
from r1helpers.inference import choose

pytestmark = pytest.mark.slow  # both tests generate with the tiny model

QUESTIONS = ["What causes anemia in a young woman with heavy periods?", "Short?",
             "A much longer question about the kidney and its function in an elderly patient with diabetes?"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from r1helpers.modeling.load import for_inference

    return for_inference(choose.load_base_for(load_config("cpu")))


def gen(loaded, questions, **over):
    """infer.generate with the cpu profile's decoding settings, some changed."""
    kwargs = {**choose.generation_kwargs(load_config("cpu")), "progress": False, **over}
    return infer.generate(loaded.model, loaded.tokenizer, questions, **kwargs)


def test_streams_the_first_question_from_inside_its_batch(loaded, capsys, monkeypatch):
    monkeypatch.delenv("R1HELPERS_HEADLESS", raising=False)
    plain = gen(loaded, QUESTIONS, max_new_tokens=16)
    capsys.readouterr()
    streamed = gen(loaded, QUESTIONS, max_new_tokens=16, stream=True)
    out = capsys.readouterr().out
    assert streamed == [{**p, "batch_seconds": s["batch_seconds"]} for p, s in zip(plain, streamed)]
    header, _, text = out.partition("\n")
    assert header.startswith("--- streaming the answer to: What causes anemia")
    assert text.strip() == streamed[0]["generated"].strip(), "the first question's row, not another"


def test_headless_prints_lines_and_never_streams(loaded, capsys, monkeypatch):
    monkeypatch.setenv("R1HELPERS_HEADLESS", "1")
    gen(loaded, QUESTIONS, max_new_tokens=4, stream=True, batch_size=2, progress=True)
    out = capsys.readouterr().out
    assert "streaming" not in out
    assert "generating: 2/3 questions" in out and "generating: 3/3 questions" in out
