"""Vocabulary pruning: keep the tokens the task's training text uses (plus special tokens), remap the
tokenizer and the embedding rows.

WordPiece is greedy longest-match-first, so text whose original pieces are all kept tokenizes to the
same pieces (any longer match in the smaller vocabulary was also in the full one and would have been
chosen); a word that needs a dropped piece becomes the unknown token. Half of MiniLM's weights are the
30,522-row word-embedding table, so this is where most of the size goes.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError


def kept_token_ids(tokenizer, texts: list[str]) -> list[int]:
    """Ids the texts use, plus every special and added token, in the original order."""
    used = set()
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        used.update(ids)
    used.update(tokenizer.all_special_ids)
    used.update(tokenizer.added_tokens_decoder.keys())
    return sorted(used)


def _remap_tokenizer_json(data: dict, keep: list[int]) -> dict:
    model = data["model"]
    if model.get("type") != "WordPiece":
        raise EdgeshrinkError(f"vocabulary pruning supports WordPiece tokenizers, not {model.get('type')}")
    id_to_token = {i: t for t, i in model["vocab"].items()}
    new_id = {old: new for new, old in enumerate(keep)}
    model["vocab"] = {id_to_token[old]: new for old, new in new_id.items()}
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = data.get("post_processor") or {}
    for processor in [post, *post.get("processors", [])]:
        for special in (processor.get("special_tokens") or {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
        for key in ("cls", "sep"):  # BertProcessing stores [token, id] pairs
            if isinstance(processor.get(key), list):
                processor[key][1] = new_id[processor[key][1]]
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    return data


def prune_vocabulary(model, tokenizer, texts: list[str], work_dir: Path):
    """Return (model, tokenizer) with only the tokens ``texts`` use; the tokenizer is saved and reloaded."""
    import torch
    from transformers import AutoTokenizer

    keep = kept_token_ids(tokenizer, texts)
    new_id = {old: new for new, old in enumerate(keep)}
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(work_dir)
    tok_json = work_dir / "tokenizer.json"
    tok_json.write_text(json.dumps(_remap_tokenizer_json(json.loads(tok_json.read_text()), keep), ensure_ascii=False))
    config_path = work_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    if "added_tokens_decoder" in tok_config:
        tok_config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in tok_config["added_tokens_decoder"].items()}
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    vocab_txt = work_dir / "vocab.txt"
    if vocab_txt.exists():
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
        vocab_txt.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
    new_tokenizer = AutoTokenizer.from_pretrained(str(work_dir), local_files_only=True)

    embeddings = model.get_input_embeddings()
    pad = model.config.pad_token_id
    new_embeddings = torch.nn.Embedding(len(keep), embeddings.embedding_dim,
                                        padding_idx=new_id.get(pad) if pad is not None else None)
    with torch.no_grad():
        new_embeddings.weight.copy_(embeddings.weight[torch.tensor(keep)])
    model.set_input_embeddings(new_embeddings)
    model.config.vocab_size = len(keep)
    if pad is not None:
        model.config.pad_token_id = new_id[pad]
    return model, new_tokenizer, {"vocab_size": len(keep), "teacher_vocab_size": len(embeddings.weight)}
