"""SentencePiece GGUF vocabularies read as BPE, merges ranked by score (as llama.cpp reads them)."""

import importlib.util

import pytest

from edgeshrink.models.gguf_tokenizer import (BYTE, CONTROL, NORMAL, USER_DEFINED, gguf_tokenizer_fields,
                                              needs_spm_bpe, spm_bpe_tokenizer)


def _fields():
    """A Gemma-shaped vocabulary: scores are minus merge ranks, so the long pieces score lowest."""
    pieces = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", 2), ("<start_of_turn>", CONTROL),
              ("<end_of_turn>", CONTROL), ("\n", USER_DEFINED), ("  ", USER_DEFINED)]
    pieces += [(f"<0x{b:02X}>", BYTE) for b in range(256)]
    normal = ["u", "s", "e", "r", "t", "h", "▁", "a", "us", "er", "he", "▁t", "▁the", "user", "se", "ser"]
    tokens = [p for p, _ in pieces] + normal
    types = [t for _, t in pieces] + [NORMAL] * len(normal)
    scores = [0.0] * len(pieces) + [-float(rank) for rank in range(len(normal))]
    return {"model": "llama", "tokens": tokens, "scores": scores, "token_type": types, "bos_token_id": 2,
            "eos_token_id": 1, "unknown_token_id": 3, "add_bos_token": True, "add_space_prefix": False}


def test_merges_follow_the_scores_not_a_unigram_sum():
    fields = _fields()
    assert needs_spm_bpe(fields) and not needs_spm_bpe({**fields, "merges": []})
    tok = spm_bpe_tokenizer(fields)
    assert tok.encode("user the", add_special_tokens=False).tokens == ["user", "▁the"]
    encoded = tok.encode("<start_of_turn>user\nthe  x")
    assert encoded.tokens[:5] == ["<bos>", "<start_of_turn>", "user", "\n", "t"]  # no merge "t"+"he" before "▁"
    assert "  " in encoded.tokens and "<0x78>" in encoded.tokens  # a user-defined run whole; "x" by bytes
    assert tok.decode(encoded.ids, skip_special_tokens=True) == "user\nthe  x"


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the llm extra (gguf)")
def test_fields_are_read_from_a_gguf_file(tmp_path):
    import gguf
    import numpy as np

    fields = _fields()
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(fields["tokens"])
    writer.add_token_scores(fields["scores"])
    writer.add_token_types(fields["token_type"])
    writer.add_bos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    read = gguf_tokenizer_fields(tmp_path / "t.gguf")
    assert read["model"] == "llama" and read["tokens"] == fields["tokens"] and read["bos_token_id"] == 2
    assert read["scores"] == fields["scores"] and read["token_type"] == fields["token_type"] and read["add_bos_token"]
    assert spm_bpe_tokenizer(read).encode("user").ids == spm_bpe_tokenizer(fields).encode("user").ids
