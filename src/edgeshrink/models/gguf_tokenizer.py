"""A GGUF's SentencePiece vocabulary as the byte-fallback BPE tokenizer it is (merges derived from the scores).

    from edgeshrink.models.gguf_tokenizer import spm_bpe_tokenizer
    tokenizer = spm_bpe_tokenizer("gemma-3-270m-q4_k_m.gguf")     # a tokenizers.Tokenizer
    tokenizer.encode("What is the capital of France?").ids        # [2, 3689, 563, 506, 5279, 529, 7001, 236881]

Why: a GGUF whose ``tokenizer.ggml.model`` is ``llama`` stores a SentencePiece vocabulary with one score per
piece and no merges. For Gemma's BPE vocabulary the score is minus the piece's merge rank, and llama.cpp
tokenizes by repeatedly merging the adjacent pair whose joined piece scores highest. transformers 4.57
converts Gemma GGUF vocabularies to a Unigram model instead, which maximises the *sum* of scores and so
prefers many short pieces ("user" -> "us" "er", "the" -> "t" "he"): the model then reads text it was never
trained on. Here the merge list is rebuilt the way llama.cpp reads the scores (a pair ranks by its joined
piece's score), user-defined pieces (newline and space runs, HTML tags) are matched whole in the raw text
before BPE, as SentencePiece and llama.cpp do, and control pieces are special tokens.
"""

from __future__ import annotations

from pathlib import Path

# llama.cpp's token types (gguf.TokenType): NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def gguf_tokenizer_fields(path: str | Path) -> dict:
    """The ``tokenizer.ggml.*`` fields of a GGUF file, decoded (strings, numbers, lists)."""
    from gguf import GGUFReader, GGUFValueType

    fields = {}
    for name, field in GGUFReader(str(path)).fields.items():
        if not name.startswith("tokenizer.ggml."):
            continue
        kind = field.types[-1] if field.types else None
        values = [bytes(field.parts[i]).decode("utf-8", errors="replace") if kind == GGUFValueType.STRING
                  else field.parts[i].tolist()[0] for i in field.data]
        fields[name[len("tokenizer.ggml."):]] = values if field.types[0] == GGUFValueType.ARRAY else values[0]
    return fields


def needs_spm_bpe(fields: dict) -> bool:
    """A SentencePiece vocabulary (scores, no merges): what ``spm_bpe_tokenizer`` rebuilds."""
    return fields.get("model") == "llama" and "scores" in fields and "merges" not in fields


def spm_bpe_tokenizer(path_or_fields) -> "tokenizers.Tokenizer":  # noqa: F821
    """The tokenizer a SentencePiece GGUF vocabulary describes, read as BPE (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from tokenizers.processors import TemplateProcessing

    fields = path_or_fields if isinstance(path_or_fields, dict) else gguf_tokenizer_fields(path_or_fields)
    tokens, scores = fields["tokens"], fields["scores"]
    types = fields.get("token_type") or [NORMAL] * len(tokens)
    # Runs of spaces are stored with real spaces; the BPE vocabulary sees spaces as "▁" (they are matched
    # whole in the raw text as user-defined pieces anyway, so their vocabulary key only has to be unique).
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    normal = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL and vocab[t] == i}
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[i], i, normal[left], normal[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    unk_id = fields.get("unknown_token_id")
    tokenizer = Tokenizer(BPE(vocab, merges, unk_token=tokens[unk_id] if unk_id is not None else None,
                              fuse_unk=True, byte_fallback=True))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for i, t in enumerate(tokens) if types[i] in (CONTROL, UNKNOWN) and vocab[t] == i])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for i, t in enumerate(tokens) if types[i] == USER_DEFINED and vocab[t] == i])
    replacement = "▁"
    prefix = [normalizers.Prepend(replacement)] if fields.get("add_space_prefix") else []
    tokenizer.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", replacement)])
    steps = [decoders.Replace(replacement, " "), decoders.ByteFallback(), decoders.Fuse()]
    if fields.get("add_space_prefix"):
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    bos_id, eos_id = fields.get("bos_token_id"), fields.get("eos_token_id")
    single, specials = ["$A"], []
    if fields.get("add_bos_token", False) and bos_id is not None:
        single, specials = [tokens[bos_id], "$A"], [(tokens[bos_id], bos_id)]
    if fields.get("add_eos_token", False) and eos_id is not None:
        single, specials = single + [tokens[eos_id]], specials + [(tokens[eos_id], eos_id)]
    if specials:
        tokenizer.post_processor = TemplateProcessing(single=single, pair=single + ["$B:1"], special_tokens=specials)
    return tokenizer
