"""Vocabulary pruning keeps tokenization of the kept text identical, for each tokenizer kind's tricky cases."""

import json

from edgeshrink.compress.vocab import _closure, _remap_tokenizer_json


def _tokenizer(model: dict):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps({"version": "1.0", "model": model, "added_tokens": [], "normalizer": None,
                                          "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
                                          "decoder": None}))


def _pruned(model: dict, texts: list[str]):
    tok = _tokenizer(model)
    used = sorted({i for text in texts for i in tok.encode(text).ids})
    data = {"model": json.loads(json.dumps(model))}
    keep = _closure(data, used)
    return tok, _tokenizer(_remap_tokenizer_json(data, keep)["model"]), keep


def test_bpe_keeps_every_merge_that_makes_a_kept_token():
    """'cd' is made by 'c d' and, earlier in rank, nowhere else; 'abcd' by 'ab cd' and 'a bcd': the text
    reaches 'abcd' through 'ab cd', which a closure keeping one merge per token would drop."""
    merges = ["b c", "bc d", "c d", "cd e", "ab cd", "a bcd", "a b", "x y"]
    vocab = {c: i for i, c in enumerate("abcdexy")}
    for merge in merges:
        a, b = merge.split()
        vocab.setdefault(a + b, len(vocab))
    texts = ["abcde", "cde"]
    before, after, keep = _pruned({"type": "BPE", "vocab": vocab, "merges": merges}, texts)
    assert [before.encode(t).tokens for t in texts] == [after.encode(t).tokens for t in texts]
    assert vocab["xy"] not in keep and len(keep) < len(vocab)


def test_unigram_keeps_single_characters_and_the_unknown_piece():
    pieces = [["<unk>", 0.0], ["▁", -1.0], ["a", -2.0], ["b", -2.0], ["z", -3.0], ["▁ab", -1.5], ["▁ba", -4.0],
              ["▁zz", -9.0]]
    model = {"type": "Unigram", "unk_id": 0, "vocab": pieces, "byte_fallback": False}
    before, after, keep = _pruned(model, ["ab"])
    assert 0 in keep and 4 in keep  # the unknown piece and every single character ("z" is unused)
    assert 7 in keep  # the lowest-scoring piece: the unknown token's lattice score is derived from it
    assert 6 not in keep  # an unused multi-character piece is dropped
    assert [before.encode(t).tokens for t in ("ab", "za")] == [after.encode(t).tokens for t in ("ab", "za")]
