from r1helpers.core import prompts


def test_inference_prompt_is_training_prefix_as_text():
    text = prompts.build_training_text("Q?", "because", "answer", "<EOS>")
    assert text.startswith(prompts.build_prompt("Q?"))
    assert prompts.build_prompt("Q?").endswith("### Response:\n<think>")
    assert text.endswith("</think>\nanswer<EOS>")


def test_inference_prompt_is_training_prefix_token_for_token(tokenizer):
    from r1helpers.data_sources import load_sample_rows

    for row in load_sample_rows()[:20]:
        ids, n_prompt = prompts.encode_example(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
        prompt_ids = prompts.encode_prompt(tokenizer, row["Question"])
        assert ids[:n_prompt] == prompt_ids and n_prompt == len(prompt_ids)
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        # Tokenizing the whole training text gives the same ids: no drift between the two forms.
        text = prompts.build_training_text(row["Question"], row["Complex_CoT"], row["Response"], tokenizer.eos_token)
        assert tokenizer(text)["input_ids"] == ids
        # What the generation code sends (padding=True on a batch of one) is the same prefix.
        assert tokenizer([prompts.build_prompt(row["Question"])], padding=True)["input_ids"][0] == prompt_ids


def test_chat_template_renders_the_raw_prompt(tokenizer):
    tokenizer.chat_template = prompts.CHAT_TEMPLATE
    q = "What causes scurvy?"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    assert rendered == tokenizer.bos_token + prompts.build_prompt(q)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": q}, {"role": "assistant", "content": "vitamin C lack\n</think>\nVitamin C deficiency."}],
        tokenize=False,
    )
    assert full == tokenizer.bos_token + prompts.build_training_text(q, "vitamin C lack", "Vitamin C deficiency.", tokenizer.eos_token)


def test_split_output_cases():
    p = prompts.split_output("\nthinking here\n</think>\nThe answer.")
    assert (p.reasoning, p.answer, p.think_closed) == ("thinking here", "The answer.", True)
    p = prompts.split_output("never stops thinking")
    assert (p.reasoning, p.answer, p.think_closed) == ("never stops thinking", "", False)
    p = prompts.split_output("<think>\nrepeated tag</think>ans")
    assert (p.reasoning, p.answer) == ("repeated tag", "ans")
    p = prompts.split_output("</think>")
    assert (p.reasoning, p.answer, p.think_closed) == ("", "", True)
