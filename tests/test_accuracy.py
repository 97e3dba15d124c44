"""Multiple-choice accuracy: answer parsing, statistics, loading and option likelihoods, all offline."""

from __future__ import annotations

import json

import pytest

from r1helpers.evaluate import accuracy as acc
from r1helpers.evaluate import metrics, more_sets, protocol, views

ABCD = ["A", "B", "C", "D"]
ABCDE = ["A", "B", "C", "D", "E"]


# ---- parse_answer_letter ------------------------------------------------------------------------

@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B) Intramuscular epinephrine", "B"),
    ("Answer: B", "B"),
    ("The answer is B.", "B"),
    ("**B**", "B"),
    ("**Answer:** B", "B"),
    ("The correct choice is option B, epinephrine.", "B"),
    ("I would choose option B.", "B"),
    ("Final answer: (B)", "B"),
])
def test_parse_recognised_forms(answer, letter):
    generated = "The patient is in anaphylactic shock, so epinephrine comes first.\n</think>\n" + answer
    assert acc.parse_answer_letter(generated, ABCD) == letter


def test_parse_gold_wrong_and_unparseable():
    gold = "B"
    right = acc.parse_answer_letter("reasoning</think>\nThe answer is B.", ABCD)
    wrong = acc.parse_answer_letter("reasoning</think>\nThe answer is D.", ABCD)
    unparsed = acc.parse_answer_letter("reasoning</think>\nEpinephrine should be given first.", ABCD)
    assert right == gold and wrong == "D" and unparsed is None
    # English words that look like letters are not answers.
    assert acc.parse_answer_letter("r</think>A patient like this needs epinephrine.", ABCD) is None
    assert acc.parse_answer_letter("r</think>the answer is a ruptured ectopic pregnancy", ABCD) is None
    assert acc.parse_answer_letter("r</think>Vitamin D deficiency.", ABCD) is None
    assert acc.parse_answer_letter("r</think>", ABCD) is None


def test_parse_needs_closed_reasoning():
    # The model never closed </think>: whatever it said is still reasoning, so no answer.
    assert acc.parse_answer_letter("The answer is B. Let me double-check the dose", ABCD) is None
    assert acc.parse_answer_letter("<think>\nAnswer: C", ABCD) is None
    # Only after the LAST </think> counts.
    assert acc.parse_answer_letter("x</think>Answer: A</think>\nAnswer: C", ABCD) == "C"
    # Models without think tags: read the whole text.
    assert acc.parse_answer_letter("The answer is B.", ABCD, think_close=None) == "B"


def test_parse_four_and_five_options():
    assert acc.parse_answer_letter("r</think>E", ABCD) is None
    assert acc.parse_answer_letter("r</think>The answer is E.", ABCD) is None
    assert acc.parse_answer_letter("r</think>E", ABCDE) == "E"
    assert acc.parse_answer_letter("r</think>The answer is E. Celiac disease", ABCDE) == "E"
    assert acc.parse_answer_letter("r</think>(D)", ABCDE) == "D"


def test_parse_explicit_answer_beats_stray_letters():
    reasoning = "Option A fits the rash, (B) fits the fever, but D is unlikely... so C.\n</think>\n"
    assert acc.parse_answer_letter(reasoning + "The answer is C.", ABCD) == "C"
    # After </think>, an explicit form wins over a letter mentioned earlier.
    assert acc.parse_answer_letter(reasoning + "Option A is tempting, but the answer is C.", ABCD) == "C"
    # No explicit form: the first standalone letter.
    assert acc.parse_answer_letter(reasoning + "(D), not (A).", ABCD) == "D"


@pytest.mark.parametrize("generated, letter", [
    ("x</think>\nThe answer is C.", "C"),                          # the strict read, when there is one
    ("A patient like this... so the answer is B. Let me check", "B"),  # never closed: read anyway
    ("Option A fits, but (D) fits better", "D"),                     # last standalone form
    ("I think it is A, no wait, C", "C"),                             # last bare letter
    ("A patient with a rash and a fever", None),                      # the article is not option A
    ("", None),
])
def test_lenient_read_finds_the_letter_anywhere(generated, letter):
    assert acc.parse_lenient_letter(generated, ABCD) == letter
    assert acc.parse_answer_letter(generated, ABCD) in (letter, None), "the lenient read never contradicts the strict"


# ---- prompt -------------------------------------------------------------------------------------

def test_mcq_prompt_layout():
    text = acc.mcq_prompt("Which vitamin?", {"A": "Thiamine", "B": "Niacin", "C": "Pyridoxine", "D": "Folate",
                                             "E": "Cobalamin"})
    lines = text.split("\n")
    assert lines[0] == "Which vitamin?"
    assert lines[2:7] == ["A. Thiamine", "B. Niacin", "C. Pyridoxine", "D. Folate", "E. Cobalamin"]
    assert "letter" in lines[-1] and "A, B, C, D or E" in lines[-1]


# ---- free text ----------------------------------------------------------------------------------

def test_normalise_and_exact_match():
    assert acc.normalise_text("  The Right Coronary   Artery. ") == "right coronary artery"
    assert acc.exact_match("right coronary artery", "The right coronary artery!")
    assert not acc.exact_match("left circumflex artery", "right coronary artery")
    assert not acc.exact_match(None, "anything")


# ---- statistics ---------------------------------------------------------------------------------

def test_wilson_interval_by_hand():
    # k=7, n=10, z=1.959964: p=0.7, z^2=3.841459, 1+z^2/n=1.3841459,
    # centre=(0.7+0.1920729)/1.3841459=0.644493, half=(1.959964/1.3841459)*sqrt(0.021+0.0096036)=0.247715
    lo, hi = metrics.wilson_interval(7, 10)
    assert lo == pytest.approx(0.644493 - 0.247715, abs=1e-4)
    assert hi == pytest.approx(0.644493 + 0.247715, abs=1e-4)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    assert metrics.wilson_interval(0, 10)[0] == 0.0 and metrics.wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        metrics.wilson_interval(11, 10)


def test_mcnemar_exact_hand_case():
    # 1 question right->wrong, 6 wrong->right, 3 unchanged. p = 2 * (C(7,0)+C(7,1)) / 2^7 = 16/128.
    before = [True] + [False] * 6 + [True, True, False]
    after = [False] + [True] * 6 + [True, True, False]
    out = metrics.mcnemar(before, after)
    assert (out["b"], out["c"], out["both_right"], out["both_wrong"]) == (1, 6, 2, 1)
    assert out["p_value"] == pytest.approx(0.125)
    assert metrics.mcnemar([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError):
        metrics.mcnemar([True], [True, False])


def fixes(k: int, n: int, right_before: int) -> tuple[list[bool], list[bool]]:
    """n questions, `right_before` right before and still right after; the adapter fixes exactly k more."""
    before = [True] * right_before + [False] * (n - right_before)
    after = [True] * (right_before + k) + [False] * (n - right_before - k)
    return before, after


def test_adapter_fixing_k_of_n_by_hand():
    out = metrics.accuracy_summary(*fixes(8, 40, right_before=20))
    assert out["delta"] == pytest.approx(8 / 40)
    # Exact McNemar: 8 discordant, all gained: p = 2 * (1/2)^8.
    assert out["mcnemar"]["p_value"] == pytest.approx(2 / 2**8) and out["verdict"] == "better"
    # Interval: Clopper-Pearson for 8 of 8 is [0.025^(1/8), 1]; the change is 8 (2 pi - 1) / 40.
    assert out["delta_ci95"] == pytest.approx([8 * (2 * 0.025 ** (1 / 8) - 1) / 40, 8 / 40])
    assert out["delta_ci95"][0] == pytest.approx(0.05223, abs=1e-5)
    # Detectable change at psi = 8/40: sqrt(.2) (1.959964 sqrt(40) + 0.841621 sqrt(40 - 3.841459 + 0.708326)) / 40.708326
    assert out["detectable_change"] == pytest.approx(0.19232, abs=1e-5)
    # ... which is the change McNemar's normal approximation detects with 80% power, checked forwards:
    norm = pytest.importorskip("scipy.stats").norm
    d, psi = out["detectable_change"], 0.2
    assert norm.cdf((40**0.5 * d - norm.ppf(0.975) * psi**0.5) / (psi - d**2) ** 0.5) == pytest.approx(0.80, abs=1e-6)


def test_four_gained_none_lost_of_68_is_not_better():
    """The issue's case: the paired bootstrap called it better; the exact test gives p = 2/2^4."""
    out = metrics.accuracy_summary(*fixes(4, 68, right_before=30))
    assert out["mcnemar"]["p_value"] == pytest.approx(0.125)
    assert out["verdict"] == "no clear change"
    lo, hi = out["delta_ci95"]
    assert lo == pytest.approx(4 * (2 * 0.025 ** 0.25 - 1) / 68) and lo < 0 and hi == pytest.approx(4 / 68)
    # Connor's formula gives 0.0810 here, below the exact floor: 6 discordant questions all gained (p = 1/32).
    assert out["detectable_change"] == pytest.approx(6 / 68)
    assert metrics.detectable_change(5, 0) is None, "five questions can never reach p < 0.05"


@pytest.mark.parametrize("b, c", [(0, 5), (0, 6), (1, 8), (2, 9), (3, 12), (10, 22), (7, 7), (15, 4)])
def test_change_interval_and_exact_test_never_disagree(b, c):
    n = 60
    lo, hi = metrics.change_interval(b, c, n)
    before, after = [True] * b + [False] * c + [True] * 5, [False] * b + [True] * c + [True] * 5
    p = metrics.mcnemar(before, after)["p_value"]
    assert lo <= (c - b) / n <= hi
    assert (lo > 0 or hi < 0) == (p < 0.05), (lo, hi, p)


def test_accuracy_summary_unchanged_is_no_clear_change():
    before = [True, False, True, False, True, True, False, True]
    after = [False, True, True, False, True, True, True, False]  # 5/8 both, 2 flips each way
    out = acc.accuracy_summary(before, after, before_unparsed=1, after_unparsed=2)
    assert out["n"] == 8 and out["delta"] == 0.0
    assert out["before"]["accuracy"] == out["after"]["accuracy"] == 5 / 8
    assert out["before"]["ci95"] == pytest.approx(list(metrics.wilson_interval(5, 8)))
    assert out["delta_ci95"][0] < 0 < out["delta_ci95"][1]
    assert out["mcnemar"]["b"] == out["mcnemar"]["c"] == 2 and out["mcnemar"]["p_value"] == 1.0
    assert (out["before"]["unparsed"], out["after"]["unparsed"]) == (1, 2)
    assert out["verdict"] == "no clear change"


def test_accuracy_summary_better_and_worse():
    before = [False] * 30 + [True] * 10
    after = [True] * 30 + [True] * 10
    assert acc.accuracy_summary(before, after)["verdict"] == "better"
    assert acc.accuracy_summary(after, before)["verdict"] == "worse"
    with pytest.raises(ValueError, match="counted as wrong"):
        acc.accuracy_summary(after, after, before_unparsed=1)


# ---- loading ------------------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_dict_options(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", [
        {"question": " Drug of choice for eclampsia? ", "options": {"B": "Magnesium sulfate", "A": "Phenytoin"},
         "answer_idx": "b", "answer": "Magnesium sulfate"},
        {"question": "Crystal in gout?", "options": {"A": "Monosodium urate", "B": "Calcium oxalate"}, "answer_idx": "A"},
    ])
    rows = acc.load_mcq_rows(str(src))
    assert rows[0] == {"id": "q-1", "question": "Drug of choice for eclampsia?",
                       "options": {"A": "Phenytoin", "B": "Magnesium sulfate"}, "answer_idx": "B",
                       "answer": "Magnesium sulfate"}
    assert rows[1]["answer"] == "Monosodium urate"  # filled in from the gold option
    assert len(acc.load_mcq_rows(src, limit=1)) == 1


def test_load_list_of_records_options(tmp_path):
    src = write_jsonl(tmp_path / "records.jsonl", [{
        "id": "medqa-7", "question": "Organism with gram-negative diplococci in CSF?",
        "options": [{"key": "A", "value": "Neisseria meningitidis"}, {"key": "B", "value": "Listeria"},
                    {"key": "C", "value": "Pneumococcus"}, {"key": "D", "value": "E. coli"}],
        "answer_idx": "A", "answer": "Neisseria meningitidis"}])
    (row,) = acc.load_mcq_rows(src)
    assert row["id"] == "medqa-7"
    assert row["options"] == {"A": "Neisseria meningitidis", "B": "Listeria", "C": "Pneumococcus", "D": "E. coli"}


def test_load_five_options_and_json(tmp_path):
    row = {"question": "Supplement with isoniazid?",
           "options": {"A": "Thiamine", "B": "Niacin", "C": "Pyridoxine", "D": "Folic acid", "E": "Cobalamin"},
           "answer_idx": "E", "answer": "Cobalamin"}
    (loaded,) = acc.load_mcq_rows(write_jsonl(tmp_path / "five.jsonl", [row]))
    assert list(loaded["options"]) == ABCDE and loaded["answer_idx"] == "E"
    as_json = tmp_path / "five.json"
    as_json.write_text(json.dumps({"data": [row]}), encoding="utf-8")
    assert acc.load_mcq_rows(as_json)[0]["options"] == loaded["options"]


def test_load_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"question": "Q?", "options": [{"key": "A", "value": "yes"}, {"key": "B", "value": "no"}],
         "answer_idx": "B", "answer": "no"}]), src)
    assert acc.load_mcq_rows(src)[0]["options"] == {"A": "yes", "B": "no"}


def test_load_bad_gold_letter_names_file_row_and_field(tmp_path):
    good = {"question": "Q?", "options": {"A": "a1", "B": "b1", "C": "c1", "D": "d1"}, "answer_idx": "A", "answer": "a1"}
    bad = {**good, "answer_idx": "E", "answer": "e1"}
    src = write_jsonl(tmp_path / "bad.jsonl", [good, good, bad])
    with pytest.raises(ValueError) as err:
        acc.load_mcq_rows(src)
    msg = str(err.value)
    assert str(src) in msg and "row 3" in msg and "answer_idx" in msg and "A, B, C, D" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("row, field", [
    ({"options": {"A": "x", "B": "y"}, "answer_idx": "A"}, "question"),
    ({"question": "Q?", "answer_idx": "A"}, "options"),
    ({"question": "Q?", "options": {"A": "x", "B": ""}, "answer_idx": "A"}, "options"),
    ({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "y"}, "answer"),
    ({"question": "Q?", "options": {"A": "x", "B": "y"}}, "answer_idx"),
])
def test_load_other_bad_rows(tmp_path, row, field):
    src = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(ValueError, match=rf"bad\.jsonl, row 1 \(line 1\): field '{field}'"):
        acc.load_mcq_rows(src)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        acc.load_mcq_rows(str(tmp_path / "absent.jsonl"))


def test_bundled_sample_loads():
    rows = acc.load_mcq_rows(acc.sample_mcq_path())
    assert len(rows) == 24
    assert sum(len(r["options"]) == 5 for r in rows) == 4
    assert all(r["answer"] == r["options"][r["answer_idx"]] for r in rows)
    assert len({r["question"] for r in rows}) == 24


# ---- option likelihoods on a tiny random Llama --------------------------------------------------

SENTENCES = [
    "the patient has chest pain and low blood pressure",
    "give intramuscular epinephrine for anaphylaxis",
    "magnesium sulfate prevents eclamptic seizures",
    "needle decompression treats tension pneumothorax",
    "which drug is best for this patient answer with the letter",
]


@pytest.fixture(scope="module")
def tiny_lm():
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"],
                                                                  show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]",
                                        unk_token="[UNK]")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         initializer_range=0.2)
    with torch.random.fork_rng():  # leave the global RNG as it was
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).float().eval()
    return model, tokenizer


def manual_sum(model, tokenizer, prompt: str, continuation: str) -> float:
    """One option at a time, no padding, no mask: the reference the batched scores must match."""
    import torch

    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(p) - 1 + j, tok].item() for j, tok in enumerate(c))


def test_option_loglikelihoods_match_unpadded_scores(tiny_lm):
    model, tokenizer = tiny_lm
    prompt = "the patient has chest pain which drug is best"
    # Options of 1, 5, 3 and 2 words: the batch is right-padded to the longest.
    options = {"A": "epinephrine", "B": "needle decompression treats tension pneumothorax",
               "C": "magnesium sulfate prevents", "D": "low blood"}
    scores = acc.option_loglikelihoods(model, tokenizer, prompt, options)
    assert set(scores) >= {"sum", "mean"}
    assert scores["tokens"] == {"A": 1, "B": 5, "C": 3, "D": 2}
    for letter, text in options.items():
        assert scores["sum"][letter] == pytest.approx(manual_sum(model, tokenizer, prompt, " " + text), abs=1e-4)
        assert scores["mean"][letter] == pytest.approx(scores["sum"][letter] / scores["tokens"][letter], abs=1e-6)
    for norm in ("mean", "sum"):
        best = max(scores[norm], key=scores[norm].get)
        assert acc.best_letter(acc.option_loglikelihoods(model, tokenizer, prompt, options, normalize=norm)[norm]) == best

    lettered = acc.option_loglikelihoods(model, tokenizer, prompt, options, template=" {letter} {text}")
    assert lettered["tokens"]["B"] == 6  # "B" is one more (unknown) word


def test_option_loglikelihoods_rejects_bad_normalisation(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="normalize"):
        acc.option_loglikelihoods(model, tokenizer, "the patient", {"A": "epinephrine"}, normalize="max")


# ---- grading generated answers, and both models on one set --------------------------------------

ROW = {"id": "q1", "question": "Which drug first in anaphylaxis?",
       "options": {"A": "Oral antihistamine", "B": "Intramuscular epinephrine", "C": "IV fluids only",
                   "D": "Inhaled salbutamol"}, "answer_idx": "B", "answer": "Intramuscular epinephrine"}


def test_option_from_text_needs_exactly_one_option():
    assert acc.option_from_text("intramuscular epinephrine.", ROW["options"]) == "B"
    assert acc.option_from_text("Epinephrine", ROW["options"]) is None  # not an option's whole text
    assert acc.option_from_text("", ROW["options"]) is None
    assert acc.option_from_text("x", {"A": "X", "B": "x."}) is None  # two options read the same


@pytest.mark.parametrize("generated, letter, by, correct, exact", [
    ("r</think>\nThe answer is B.", "B", "letter", True, False),
    ("r</think>\nIntramuscular epinephrine.", "B", "text", True, True),   # no letter: the gold text counts
    ("r</think>\nOral antihistamine", "A", "text", False, False),
    ("r</think>\nEpinephrine, quickly.", None, None, False, False),        # unparseable: wrong
    ("The answer is B but I keep thinking", None, None, False, False),    # never closed </think>
])
def test_grade_mcq_generation(generated, letter, by, correct, exact):
    g = acc.grade_mcq_generation(generated, ROW)
    assert (g["letter"], g["by"], g["correct"], g["unparsed"], g["exact_match"]) == (letter, by, correct,
                                                                                     letter is None, exact)


def _answers(letters: str, texts: list[str] | None = None) -> list[dict]:
    out = []
    for k, letter in enumerate(letters):
        rec = {"id": f"q{k}", "likelihood_letter": letter}
        if texts is not None:
            rec.update(generated=texts[k], think_closed="</think>" in texts[k], finished=True, new_tokens=5)
        out.append(rec)
    return out


def test_mcq_comparison_by_hand():
    rows = [{**ROW, "id": f"q{k}"} for k in range(5)]  # gold B every time
    base = _answers("BBAAA", ["r</think>B", "r</think>A", "thinking", "r</think>Intramuscular epinephrine", "x"])
    tuned = _answers("BABBB", ["r</think>B", "r</think>B", "r</think>B", "r</think>C", "r</think>Maybe"])
    out = acc.mcq_comparison(rows, base, tuned)
    lik, gen = out["scorings"]["likelihood"], out["scorings"]["generated"]
    # likelihood: base right on q0, q1 (2/5); tuned right on q0, q2, q3, q4 (4/5); lost q1, gained q2-q4.
    assert (lik["before"]["correct"], lik["after"]["correct"]) == (2, 4)
    assert (lik["mcnemar"]["b"], lik["mcnemar"]["c"]) == (1, 3)
    assert lik["mcnemar"]["p_value"] == pytest.approx(2 * (1 + 4) / 16)  # min(b, c) = 1 of 4 discordant
    assert lik["before"]["ci95"] == list(metrics.wilson_interval(2, 5))
    # generated: base right on q0 (letter) and q3 (gold text); q2 unclosed and q4 letterless are unparseable.
    assert (gen["before"]["correct"], gen["before"]["unparsed"], gen["before"]["by_text"]) == (2, 2, 1)
    assert (gen["before"]["exact_match"], gen["before"]["think_closed"]) == (1, 3)
    assert (gen["after"]["correct"], gen["after"]["unparsed"]) == (3, 1)
    assert out["items"][3]["base"]["generated_by"] == "text"
    rows_out = views.accuracy_rows(out)
    assert [r["scoring"] for r in rows_out] == ["likelihood", "generated", "generated, lenient read"]
    assert rows_out[0]["before"] == "2/5 = 40.0%" and rows_out[0]["change (points)"] == "+40.0"
    assert rows_out[1]["unparseable before / after"] == "2 / 1" and rows_out[0]["unparseable before / after"] == "-"
    # lenient: base reads B (q0), A (q1), none (q2: "thinking"), B (q3, by text), none (q4); tuned B, B, B, C, none.
    assert (gen["lenient"]["before"]["correct"], gen["lenient"]["after"]["correct"]) == (2, 3)
    assert views.accuracy_rows(None) == []


def test_mcq_comparison_without_generation_and_mismatches():
    rows = [{**ROW, "id": f"q{k}"} for k in range(3)]
    out = acc.mcq_comparison(rows, _answers("BBB"), _answers("AAA"))
    assert out["scorings"]["generated"] is None and out["scorings"]["likelihood"]["delta"] == -1.0
    with pytest.raises(ValueError, match="both models"):
        acc.mcq_comparison(rows, _answers("BB"), _answers("BBB"))
    with pytest.raises(ValueError, match="keep the rows' order"):
        acc.mcq_comparison(rows, _answers("BBB")[::-1], _answers("BBB"))


def test_closing_think_alone_is_a_format_change():
    """The base model states the right letter but never closes </think>; the tuned one closes it and states the
    same letter. The strict read goes 0 -> 24 (exact p = 2/2^24); the lenient read is 24 -> 24."""
    rows = [{**ROW, "id": f"q{k}"} for k in range(24)]
    base = _answers("A" * 24, ["The bleeding and rash... so the answer is B. Let me double-check the dose"] * 24)
    tuned = _answers("A" * 24, ["The bleeding and rash... so the answer is B.\n</think>\nThe answer is B."] * 24)
    gen = acc.mcq_comparison(rows, base, tuned)["scorings"]["generated"]
    assert (gen["before"]["correct"], gen["after"]["correct"]) == (0, 24) and gen["strict_verdict"] == "better"
    assert (gen["lenient"]["before"]["correct"], gen["lenient"]["after"]["correct"]) == (24, 24)
    assert gen["lenient"]["verdict"] == "no clear change"
    assert gen["verdict"] == "format change"
    # The same strict gain with the lenient read gaining too is knowledge, not format.
    base = _answers("A" * 24, ["The answer is D. Let me double-check"] * 24)
    assert acc.mcq_comparison(rows, base, tuned)["scorings"]["generated"]["verdict"] == "better"


def test_sample_name_loads_the_bundled_file():
    assert acc.load_mcq_rows(acc.SAMPLE_MCQ, limit=3) == acc.load_mcq_rows(acc.sample_mcq_path(), limit=3)


def _tiny_rows():
    return [{"id": "t1", "question": "the patient has chest pain", "answer_idx": "A", "answer": "epinephrine",
             "options": {"A": "epinephrine", "B": "magnesium sulfate", "C": "needle decompression"}},
            {"id": "t2", "question": "give intramuscular epinephrine", "answer_idx": "B", "answer": "low blood",
             "options": {"A": "tension pneumothorax", "B": "low blood"}}]


@pytest.mark.slow
def test_answer_mcq_uses_the_recipe_prompt_and_generate(tiny_lm):
    from r1helpers.core import prompts
    from r1helpers.inference.generate import generate

    model, tokenizer = tiny_lm
    rows = _tiny_rows()
    decoding = dict(max_new_tokens=6, batch_size=2, do_sample=False, seed=1, progress=False)
    answers = acc.answer_mcq(model, tokenizer, rows, decoding=decoding)
    for row, a in zip(rows, answers):
        prompt = prompts.build_prompt(acc.mcq_question(row))
        assert a["likelihood_letter"] == acc.best_letter(acc.option_loglikelihoods(model, tokenizer, prompt, row["options"])["mean"])
        assert set(a["likelihood_scores"]) == set(row["options"])
    gens = generate(model, tokenizer, [acc.mcq_question(r) for r in rows], **decoding)
    assert [a["generated"] for a in answers] == [g["generated"] for g in gens]
    assert all(a["new_tokens"] <= 6 + 1 for a in answers)
    assert "generated" not in acc.answer_mcq(model, tokenizer, rows)[0]


@pytest.mark.slow
def test_answer_mcq_before_after_base_side_is_the_model_without_adapter(tiny_lm):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import copy

    model, tokenizer = tiny_lm
    rows = _tiny_rows()
    plain = acc.answer_mcq(model, tokenizer, rows)
    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    both = acc.answer_mcq_before_after(wrapped, tokenizer, rows, decoding=dict(max_new_tokens=4, progress=False))
    for a, b in zip(plain, both["base"]):
        assert a["likelihood_letter"] == b["likelihood_letter"]
        for k in a["likelihood_scores"]:
            assert b["likelihood_scores"][k] == pytest.approx(a["likelihood_scores"][k], abs=1e-4)
    moved = [abs(t["likelihood_scores"][k] - b["likelihood_scores"][k])
             for t, b in zip(both["tuned"], both["base"]) for k in b["likelihood_scores"]]
    assert max(moved) > 1e-3, "the adapter is on for the fine-tuned side"
    assert all("generated" in r for r in both["base"] + both["tuned"])


def test_attach_generations_joins_by_id_and_refuses_other_questions():
    answers = [{"id": "q1", "likelihood_letter": "A"}, {"id": "q2", "likelihood_letter": "C"}]
    made = [{"id": "q1", "generated": "x</think>B", "think_closed": True, "finished": True, "new_tokens": 5},
            {"id": "q2", "generated": "y", "think_closed": False, "finished": False, "new_tokens": 9}]
    joined = acc.attach_generations(answers, made)
    assert joined[0] == {"id": "q1", "likelihood_letter": "A", "generated": "x</think>B", "think_closed": True,
                         "finished": True, "new_tokens": 5}
    assert joined[1]["generated"] == "y" and joined[1]["likelihood_letter"] == "C"
    assert "generated" not in answers[0], "the answers passed in are not changed"
    with pytest.raises(ValueError, match="other questions"):
        acc.attach_generations(answers, made[::-1])


# ---- MedMCQA and PubMedQA schemas (small files written here, never copied from the sets) -----------

def test_load_medmcqa_schema(tmp_path):
    rows = [{"id": "m1", "question": "Which vitamin deficiency causes scurvy?", "opa": "Vitamin A", "opb": "Vitamin C",
             "opc": "Vitamin D", "opd": "Vitamin K", "cop": 1, "choice_type": "single", "subject_name": "Medicine"},
            {"id": "m2", "question": "Drug of choice in anaphylaxis?", "opa": "Adrenaline", "opb": "Atropine",
             "opc": "Dopamine", "opd": "Digoxin", "cop": 0}]
    path = tmp_path / "medmcqa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    got = acc.load_mcq_rows(path)
    assert got[0] == {"id": "m1", "question": "Which vitamin deficiency causes scurvy?",
                      "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"},
                      "answer_idx": "B", "answer": "Vitamin C"}
    assert got[1]["answer_idx"] == "A" and got[1]["answer"] == "Adrenaline"
    path.write_text(json.dumps({**rows[0], "cop": -1}))
    with pytest.raises(ValueError, match=r"row 1.*'cop'.*validation"):
        acc.load_mcq_rows(path)


def test_load_pubmedqa_schema(tmp_path):
    row = {"pubid": 123, "question": "Does early mobilisation shorten hospital stay?",
           "context": {"contexts": ["Patients were randomised.", "Stay was 2 days shorter."], "labels": ["M", "R"]},
           "long_answer": "Yes.", "final_decision": "yes"}
    path = tmp_path / "pubmedqa.json"
    path.write_text(json.dumps([row, {**row, "pubid": 124, "final_decision": "Maybe"}]))
    got = acc.load_mcq_rows(path)
    assert got[0]["options"] == {"A": "yes", "B": "no", "C": "maybe"} and got[0]["answer_idx"] == "A"
    assert got[0]["id"] == "123" and got[1]["answer_idx"] == "C"
    assert got[0]["question"] == ("Context: Patients were randomised.\nStay was 2 days shorter.\n"
                                  "Question: Does early mobilisation shorten hospital stay?")
    path.write_text(json.dumps([{**row, "final_decision": "unclear"}]))
    with pytest.raises(ValueError, match="final_decision"):
        acc.load_mcq_rows(path)


def test_parse_source_names_config_and_split():
    from r1helpers.evaluate.questions import parse_source

    assert parse_source("qiaojin/PubMedQA", None) == ("qiaojin/PubMedQA", "pqa_labeled", "train")
    assert parse_source("openlifescienceai/medmcqa@validation", "test") == ("openlifescienceai/medmcqa", None, "validation")
    assert parse_source("openlifescienceai/medmcqa", None) == ("openlifescienceai/medmcqa", None, "validation")
    assert parse_source("a/b:cfg@dev") == ("a/b", "cfg", "dev")
    assert parse_source("GBaker/MedQA-USMLE-4-options", "test") == ("GBaker/MedQA-USMLE-4-options", None, "test")


# ---- contamination --------------------------------------------------------------------------------

TRAIN_Q = ("A 45-year-old man presents with crushing substernal chest pain radiating to the left arm for two hours, "
           "with diaphoresis and nausea. What is the most likely diagnosis?")


def test_planted_duplicate_is_dropped_and_counted():
    from r1helpers.evaluate import contamination

    planted = {"id": "dup", "question": "Vignette:  " + TRAIN_Q[10:90].upper().replace(" ", "\n ", 3) + " Which drug?",
               "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "x"}
    near = {"id": "near", "question": TRAIN_Q[:63] + " then something else entirely happens to the patient",
            "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "x"}
    clean = {"id": "clean", "question": "A 3-year-old girl has a barking cough and inspiratory stridor at night.",
             "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "x"}
    kept, record = contamination.drop_contaminated([clean, planted, near], ["unrelated question", TRAIN_Q])
    assert [r["id"] for r in kept] == ["clean", "near"], "80 shared characters drop it, 63 do not"
    assert record["excluded"] == 1 and record["checked"] == 3 and record["kept"] == 2
    assert record["items"][0]["id"] == "dup" and record["items"][0]["train_row"] == 1
    assert record["items"][0]["shared_chars"] >= 64
    exact = {**near, "id": "exact64", "question": "zz " + TRAIN_Q[20:84] + " qq"}
    assert [h["id"] for h in contamination.contaminated([exact], [TRAIN_Q])] == ["exact64"]


def test_contamination_index_finds_spans_at_every_offset():
    from r1helpers.evaluate.contamination import SpanIndex

    import random

    rng = random.Random(0)
    train = "".join(rng.choice("abcdefgh ") for _ in range(2000))
    index = SpanIndex([train], span=64)
    for start in rng.sample(range(0, len(train) - 70), 40):
        piece = train[start : start + 64]
        if " ".join(piece.split()) != piece:  # normalisation would change it; the check is on normalised text
            continue
        assert index.shared_span("#" + piece + "#") is not None
    other = "".join(rng.choice("ijklmnop") for _ in range(500))
    assert index.shared_span(other) is None


# ---- the authors' protocol: prompt and lenient matcher --------------------------------------------

OPTS = {"A": "Iron deficiency anemia", "B": "Vitamin B12 deficiency", "C": "Folate deficiency",
        "D": "Anemia of chronic disease"}


@pytest.mark.parametrize("text, letter, rule", [
    ("The answer is B.", "B", "answer_is"),
    ("the answer is **C**, folate deficiency", "C", "answer_is"),
    ("So the answer is (D). Not A.", "D", "answer_is"),
    ("long reasoning where the answer is A ... </think>The answer is C.", "C", "answer_is"),
    ("C", "C", "letter"),
    ("**Answer: (C)**", "C", "letter"),
    ("A patient like this has option D.", "D", "letter"),            # "A " is the article, never option A
    ("It is folate deficiency.", "C", "option_text"),
    ("vitamin b12 deficiency, not folate deficiency", "B", "option_text"),  # first option text named
    ("probably vitamin b12 deficency", "B", "most_similar"),
    ("", None, "empty"),
])
def test_lenient_matcher_rules_in_order(text, letter, rule):
    assert protocol.match_choice_lenient(text, OPTS) == (letter, rule)


def test_lenient_matcher_last_pick_and_strict_disagree():
    assert protocol.match_choice_lenient("the answer is A, no wait, the answer is B", OPTS, pick="last") == ("B", "answer_is")
    row = {"id": "q", "question": "?", "options": OPTS, "answer_idx": "C", "answer": OPTS["C"]}
    graded = protocol.grade_protocol("thinking about folate deficiency and more", row)   # reasoning never closed
    assert graded["lenient_correct"] and graded["lenient_rule"] == "option_text"
    assert graded["strict_unparsed"] and not graded["strict_correct"]


def test_protocol_question_layout():
    row = {"question": "Which deficiency?", "options": {"A": "Iron", "B": "Folate"}}
    assert protocol.protocol_question(row) == ("Please answer the following multiple-choice question:\n"
                                               "Which deficiency?\nA. Iron\nB. Folate")


def test_protocol_comparison_by_hand():
    rows = [{"id": f"q{i}", "question": "?", "options": OPTS, "answer_idx": "C", "answer": OPTS["C"]} for i in range(4)]
    base = [{"id": "q0", "generated": "The answer is C."}, {"id": "q1", "generated": "The answer is A."},
            {"id": "q2", "generated": "no idea at all"}, {"id": "q3", "generated": ""}]
    tuned = [{"id": f"q{i}", "generated": "r</think>The answer is C."} for i in range(4)]
    out = protocol.protocol_comparison(rows, base, tuned, source="GBaker/MedQA-USMLE-4-options")
    le, st = out["scorings"]["lenient"], out["scorings"]["strict"]
    assert out["n"] == 4 and le["after"]["correct"] == 4 and st["after"]["correct"] == 4
    assert le["before"]["correct"] == 1 + (protocol.match_choice_lenient("no idea at all", OPTS)[0] == "C")
    assert le["before"]["unparsed"] == 1 and le["before"]["matched_by"]["most_similar"] == 1
    assert st["before"]["correct"] == 0 and st["before"]["unparsed"] == 4, "no </think>: the strict parser reads nothing"
    assert {p["set"] for p in out["published"]} == {"MedQA"} and len(out["published"]) == 2
    assert all("not reproduced here" in p["note"] for p in out["published"])
    assert more_sets.published_figures("qiaojin/PubMedQA:pqa_labeled@train")[0]["accuracy"] == 74.0
    assert more_sets.published_figures("my_questions.jsonl") == []


def test_answer_protocol_on_a_tiny_model(tiny_lm):
    model, tokenizer = tiny_lm
    rows = _tiny_rows()
    out = protocol.answer_protocol(model, tokenizer, rows, max_new_tokens=5, batch_size=2, seed=1)
    assert [o["id"] for o in out] == ["t1", "t2"] and all(o["new_tokens"] <= 6 for o in out)
    assert "recipe" in out[0]["wrapped_in"], "the tiny tokenizer has no chat template"
    again = protocol.answer_protocol(model, tokenizer, rows, max_new_tokens=5, batch_size=1, seed=1)
    assert [o["id"] for o in again] == ["t1", "t2"]


# ---- the generated scoring on a subset, and the budgets ---------------------------------------------

def test_generated_scoring_on_the_first_questions_only():
    rows = [{"id": f"q{i}", "question": "?", "options": {"A": "a", "B": "b"}, "answer_idx": "A", "answer": "a"}
            for i in range(5)]
    base = [{"id": r["id"], "likelihood_letter": "A"} for r in rows]
    tuned = [{"id": r["id"], "likelihood_letter": "B"} for r in rows]
    made = [{"id": f"q{i}", "generated": "x</think>A", "think_closed": True, "finished": True, "new_tokens": 3}
            for i in range(2)]
    base, tuned = acc.attach_generations(base, made), acc.attach_generations(tuned, made)
    assert "generated" in base[1] and "generated" not in base[2]
    out = acc.mcq_comparison(rows, base, tuned)
    assert out["scorings"]["likelihood"]["n"] == 5 and out["scorings"]["generated"]["n"] == 2
    assert out["scorings"]["generated"]["before"]["think_closed"] == 2
    with pytest.raises(ValueError, match="other questions"):
        acc.attach_generations(base, made[1:])


def test_seed_sizes_follow_from_their_t4_budgets():
    from r1helpers.core.config import CompareConfig
    from r1helpers.evaluate import budget

    c = CompareConfig()
    assert c.mcq_generate_rows == budget.rows_for_budget(30, 1200) == 200
    assert c.mcq_protocol_rows == budget.rows_for_budget(30, c.mcq_protocol_max_new_tokens) == 110
    assert budget.generation_seconds(200, 1200) <= 30 * 60 < budget.generation_seconds(210, 1200)
    assert 35 < budget.likelihood_minutes("GBaker/MedQA-USMLE-4-options", 1273) < 45
    assert budget.likelihood_minutes("my.jsonl", 10) is None
    assert 10 < budget.decode_tokens_per_second(1, 600) < 60, "a single T4 sequence: 15-25 tokens/s is what is quoted"
