"""The pad token: one that is not EOS (collators mask padding out of the loss by id, so an EOS pad would keep
the model from learning to stop), from the configuration or the tokenizer's own special tokens."""

from __future__ import annotations

# Reserved pad tokens of Llama-3 / R1 tokenizers: no embedding resize (which 4-bit weights cannot do cheaply).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|reserved_special_token_0|>", "<|pad|>", "<pad>")


class ModelError(RuntimeError):
    """The model or tokenizer cannot be used as configured."""


def choose_pad_token(tokenizer, preferred: str | None = None) -> str:
    """A pad token that is neither EOS nor BOS: `preferred` (model.pad_token), else the tokenizer's own pad, a
    reserved name of PAD_CANDIDATES, or any other special token (SmolLM2: `<|endoftext|>`); else ModelError."""
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
    """Set a pad that differs from EOS (`pad_token`: model.pad_token; None picks one) on `tokenizer`, in place;
    returns a sentence saying what it did."""
    before = tokenizer.pad_token
    was = "unset" if before is None else ("EOS" if tokenizer.pad_token_id == tokenizer.eos_token_id else repr(before))
    chosen = choose_pad_token(tokenizer, pad_token)
    if chosen == before:
        return f"pad token {chosen!r} differs from EOS" + (" (model.pad_token)" if pad_token else "")
    tokenizer.pad_token = chosen
    return f"pad token set to {chosen!r} (was {was})" + (" (model.pad_token)" if pad_token else "")
