"""Vocabulary pruning: keep the tokens the task's training text uses (plus special tokens), remap the
tokenizer and the embedding rows.

The training text tokenizes exactly as before for each tokenizer kind:
- WordPiece (BERT, DistilBERT, ELECTRA, MPNet) is greedy longest-match-first: any longer match in the
  smaller vocabulary was also in the full one and would have been chosen. A word that needs a dropped
  piece becomes the unknown token.
- BPE (RoBERTa; byte-level) applies merges by rank: every merge the kept tokens were built through is
  kept (with the tokens it joins), so the same merges fire in the same order; merges that never fired
  are dropped. Every single-character token stays, so byte-level BPE still encodes any text.
- Unigram (SentencePiece: XLM-R, ALBERT, DeBERTa-v3) picks the best-scoring segmentation: the original
  best one is still available and nothing new is, so it is still chosen. Every single-character piece
  and byte-fallback piece stays, so no character newly becomes the unknown token.
Half of MiniLM's weights are the 30,522-row word-embedding table, so this is where most of the size goes.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError


SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model", "spiece.model")


def kept_token_ids(tokenizer, texts: list[str], keep_below: int = 0) -> list[int]:
    """Ids the texts use, plus every special and added token and ids < ``keep_below``, in original order."""
    used = set(range(keep_below))
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        used.update(ids)
    used.update(tokenizer.all_special_ids)
    used.update(tokenizer.added_tokens_decoder.keys())
    return sorted(used)


def _merge_pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else (merge[0], merge[1])


def _bpe_closure(model: dict, keep: list[int]) -> list[int]:
    """Add every token a kept token is merged from (recursively) and every single-character token."""
    prefix = model.get("continuing_subword_prefix") or ""
    vocab = model["vocab"]
    made_from: dict[str, list[tuple[str, str]]] = {}  # a token can be made by several merges: keep them all
    for merge in model.get("merges", []):
        a, b = _merge_pair(merge)
        made_from.setdefault(a + (b[len(prefix):] if prefix and b.startswith(prefix) else b), []).append((a, b))
    id_to_token = {i: t for t, i in vocab.items()}
    kept = {id_to_token[i] for i in keep if i in id_to_token}
    kept |= {t for t in vocab if len(t) == 1 or (prefix and t.startswith(prefix) and len(t) == len(prefix) + 1)}
    if model.get("unk_token") in vocab:
        kept.add(model["unk_token"])
    todo = list(kept)
    while todo:
        for pair in made_from.get(todo.pop(), ()):
            for part in pair:
                if part not in kept and part in vocab:
                    kept.add(part)
                    todo.append(part)
    return sorted(set(keep) | {vocab[t] for t in kept})


SUPPORTED_KINDS = ("WordPiece", "BPE", "Unigram")


def check_supported(tokenizer) -> None:
    """Refuse, before any work, a tokenizer whose model kind vocabulary pruning cannot remap."""
    kind = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("type")
    if kind not in SUPPORTED_KINDS:
        raise EdgeshrinkError(f"vocabulary pruning supports WordPiece, BPE and Unigram (SentencePiece) tokenizers, "
                              f"not {kind}")


def _closure(data: dict, keep: list[int]) -> list[int]:
    """The ids to keep so that the kept text tokenizes the same (see the module docstring)."""
    model = data["model"]
    kind = model.get("type")
    if kind == "BPE":
        return _bpe_closure(model, keep)
    if kind == "Unigram":
        # Single characters stay, so no character that had a piece falls back to the unknown token (whose
        # score in the lattice depends on the vocabulary's minimum); byte-fallback pieces stay likewise.
        pieces = [p for p, _ in model["vocab"]]
        extra = {i for i, p in enumerate(pieces) if len(p.lstrip("\u2581")) <= 1 or (len(p) == 6 and p.startswith("<0x"))}
        if model.get("unk_id") is not None:
            extra.add(model["unk_id"])
        scores = [score for _, score in model["vocab"]]
        extra.add(scores.index(min(scores)))  # the unknown token's lattice score is derived from the minimum
        return sorted(set(keep) | extra)
    if kind == "WordPiece":
        return sorted(set(keep) | ({model["vocab"][model["unk_token"]]} if model.get("unk_token") in model["vocab"] else set()))
    raise EdgeshrinkError(f"vocabulary pruning supports WordPiece, BPE and Unigram (SentencePiece) tokenizers, "
                          f"not {kind}")


def _remap_tokenizer_json(data: dict, keep: list[int]) -> dict:
    model = data["model"]
    kind = model.get("type")
    new_id = {old: new for new, old in enumerate(keep)}
    if kind == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in keep]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        id_to_token = {i: t for t, i in model["vocab"].items()}
        model["vocab"] = {id_to_token[old]: new for old, new in new_id.items()}
    if kind == "BPE":
        prefix = model.get("continuing_subword_prefix") or ""
        kept = model["vocab"]

        def keeps(merge) -> bool:
            a, b = _merge_pair(merge)
            joined = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
            return a in kept and b in kept and joined in kept

        model["merges"] = [m for m in model.get("merges", []) if keeps(m)]
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = data.get("post_processor") or {}
    for processor in [post, *post.get("processors", [])]:
        for special in (processor.get("special_tokens") or {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
        for key in ("cls", "sep"):  # BertProcessing/RobertaProcessing store [token, id] pairs
            if isinstance(processor.get(key), list):
                processor[key][1] = new_id[processor[key][1]]
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    return data


def prune_vocabulary(model, tokenizer, texts: list[str], work_dir: Path):
    """Return (model, tokenizer) with only the tokens ``texts`` use; the tokenizer is saved and reloaded."""
    import torch
    from transformers import AutoTokenizer

    from edgeshrink.models import arch

    family = arch.family_of(model.config)
    # Families whose positions start after padding_idx (RoBERTa, MPNet) must keep the ids up to it unchanged.
    padding_idx = family.padding_idx(model.config)
    keep_below = 0 if padding_idx is None else padding_idx + 1
    keep = kept_token_ids(tokenizer, texts, keep_below)
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(work_dir)
    tok_json = work_dir / "tokenizer.json"
    data = json.loads(tok_json.read_text(encoding="utf-8"))
    keep = _closure(data, keep)
    new_id = {old: new for new, old in enumerate(keep)}
    tok_json.write_text(json.dumps(_remap_tokenizer_json(data, keep), ensure_ascii=False), encoding="utf-8")
    config_path = work_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    if "added_tokens_decoder" in tok_config:
        tok_config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in tok_config["added_tokens_decoder"].items()}
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    vocab_txt = work_dir / "vocab.txt"
    if vocab_txt.exists():
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
        vocab_txt.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
    for name in SLOW_TOKENIZER_FILES:  # the slow tokenizer's own vocabulary would no longer match
        (work_dir / name).unlink(missing_ok=True)
    new_tokenizer = AutoTokenizer.from_pretrained(str(work_dir), local_files_only=True)
    new_tokenizer.model_input_names = family.inputs(model.config)

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
