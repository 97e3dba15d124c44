"""The pad token: one that is not EOS, from the configuration or the tokenizer's own special tokens.

An EOS pad is masked out of the loss by collators that mask padding by id, so the model would
never learn to stop. Llama-3 / R1 tokenizers carry reserved pad tokens; others (SmolLM2) have
another special token that is neither EOS nor BOS (`<|endoftext|>`); a tokenizer with neither needs
`model.pad_token` or a new token. Plain functions over a tokenizer; `r1helpers.modeling.load`
re-exports them.
"""

from __future__ import annotations

# Llama-3 / R1 tokenizers carry reserved tokens that make a pad distinct from EOS without resizing
# the embeddings (which 4-bit weights cannot do cheaply); other tokenizers fall back to another
# existing special token (choose_pad_token).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|reserved_special_token_0|>", "<|pad|>", "<pad>")


class ModelError(RuntimeError):
    """The model or tokenizer cannot be used as configured."""


def choose_pad_token(tokenizer, preferred: str | None = None) -> str:
    """A pad token that differs from EOS and BOS (an EOS pad is masked out of the loss: the model never
    learns to stop). Returns the token string; the caller sets `tokenizer.pad_token`.

    Order: `preferred` (model.pad_token) if it is in the vocabulary and is not EOS/BOS; the
    tokenizer's own pad if it differs from EOS; the Llama-3/R1 reserved names in PAD_CANDIDATES;
    any other existing special token that is not EOS/BOS (SmolLM2: `<|endoftext|>`). None of them:
    ModelError naming `model.pad_token`.
    """
    vocab = tokenizer.get_vocab()
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}

    def ok(tok: str | None) -> bool:
        return tok is not None and tok in vocab and vocab[tok] not in taken

    if preferred is not None:
        if ok(preferred):
            return preferred
        why = "is not in the tokenizer's vocabulary" if preferred not in vocab else "is the EOS or BOS token"
        raise ModelError(f"model.pad_token={preferred!r} {why}; name an existing token that is neither "
                         "(or null to pick one automatically)")
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id and ok(tokenizer.pad_token):
        return tokenizer.pad_token
    for cand in PAD_CANDIDATES:
        if ok(cand):
            return cand
    specials = list(getattr(tokenizer, "all_special_tokens", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials += [t.content for _, t in sorted(decoder.items()) if getattr(t, "special", False)]
    for cand in specials:
        if ok(cand):
            return cand
    raise ModelError(
        "the tokenizer has no pad token distinct from EOS/BOS: none of "
        f"{PAD_CANDIDATES} nor any other special token exists. Set model.pad_token to an existing token that is "
        "neither EOS nor BOS, or add one (tokenizer.add_special_tokens({'pad_token': '<|pad|>'}) and "
        "model.resize_token_embeddings(len(tokenizer)))"
    )


def ensure_pad_token(tokenizer, pad_token: str | None = None) -> str:
    """Make pad differ from EOS; otherwise EOS is masked out of the loss and generation never stops.

    `pad_token` (model.pad_token) names the token to use; None picks one (`choose_pad_token`).
    Changes `tokenizer` in place and returns a sentence saying what it did.
    """
    before = tokenizer.pad_token
    was = "unset" if before is None else ("EOS" if tokenizer.pad_token_id == tokenizer.eos_token_id else repr(before))
    chosen = choose_pad_token(tokenizer, pad_token)
    if chosen == before:
        return f"pad token {chosen!r} differs from EOS" + (" (model.pad_token)" if pad_token else "")
    tokenizer.pad_token = chosen
    return f"pad token set to {chosen!r} (was {was})" + (" (model.pad_token)" if pad_token else "")
