"""Tiny random-weight classifiers of every registered family, each with the tokenizer kind it ships.

Built inside the tests from the registry's ``test_config``: WordPiece (BERT, ELECTRA, DistilBERT,
MPNet), byte-level BPE (RoBERTa) or Unigram/SentencePiece (XLM-R, ALBERT, DeBERTa-v3), trained on the
test vocabulary in well under a second. Special-token ids follow each family's checkpoints, so that
RoBERTa's and MPNet's padding id is 1 (their positions start after it).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import WORDS, make_texts

# Special tokens in id order, per family (what its real checkpoints use).
SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "electra": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "distilbert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "mpnet": ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "albert": ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
    "deberta-v2": ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
}


# Words the tokenizers learn but the test data never uses: vocabulary pruning has something to drop.
UNUSED = ("zebra quartz jukebox wizard oxygen rhythm sphinx glyph vortex kayak yacht banjo mosaic nectar "
          "pyramid quiver walrus zephyr").split()


def _corpus() -> list[str]:
    return [t for t, _ in make_texts(400, seed=11)] + [" ".join(WORDS)] * 3 + [" ".join(UNUSED)] * 20


def special_roles(specials: list[str]) -> dict[str, str]:
    """pad/unk/cls/sep/mask names from a family's special-token list."""
    def pick(*names):
        return next(s for s in specials if s.strip("[]<>").lower() in names)

    return {"pad_token": pick("pad"), "unk_token": pick("unk"), "cls_token": pick("cls", "s"),
            "sep_token": pick("sep", "/s"), "mask_token": pick("mask")}


def _wordpiece(path: Path, specials: list[str], family: str):
    from transformers import BertTokenizerFast, MPNetTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = specials + list(WORDS) + list(UNUSED) + [f"##{c}" for c in letters] + list(letters + ".,!?'")
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    cls = MPNetTokenizerFast if family == "mpnet" else BertTokenizerFast
    return cls(vocab_file=str(path / "vocab.txt"), do_lower_case=True, **special_roles(specials))


def _bpe(path: Path, specials: list[str]):
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_corpus(), vocab_size=600, min_frequency=2, special_tokens=specials, show_progress=False)
    roles = special_roles(specials)
    tok.post_processor = RobertaProcessing((roles["sep_token"], tok.token_to_id(roles["sep_token"])),
                                           (roles["cls_token"], tok.token_to_id(roles["cls_token"])))
    tok.save(str(path / "tokenizer.json"))
    return RobertaTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), bos_token=roles["cls_token"],
                                eos_token=roles["sep_token"], **roles)


def _unigram(path: Path, specials: list[str]):
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    roles = special_roles(specials)
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(_corpus(), vocab_size=160, special_tokens=specials, unk_token=roles["unk_token"],
                            show_progress=False)
    cls, sep = roles["cls_token"], roles["sep_token"]
    tok.post_processor = TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
                                            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    tok.save(str(path / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **roles)


def make_family_model(family_name: str, path: Path, labels=("negative", "positive"), seed: int = 0,
                      pad_token_id: int | None = None, **overrides) -> Path:
    """A tiny random classifier of ``family_name`` (a registry name) with its tokenizer, saved at ``path``.

    ``pad_token_id`` (below 5) moves the padding token to that id, in the tokenizer and the config alike; by
    default it has the id the family's checkpoints give it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgeshrink.models.arch import FAMILIES

    family = FAMILIES[family_name]
    path.mkdir(parents=True, exist_ok=True)
    specials = SPECIALS[family.name]
    if pad_token_id is not None:
        pad = special_roles(specials)["pad_token"]
        others = [s for s in specials if s != pad]
        specials = others[:pad_token_id] + [pad] + others[pad_token_id:]
    tokenizer = {"wordpiece": lambda: _wordpiece(path, specials, family.name), "bpe": lambda: _bpe(path, specials),
                 "unigram": lambda: _unigram(path, specials)}[family.tokenizer]()
    settings = {**family.test_config, **overrides, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(family.model_types[0], **settings, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _decoder_bpe(path: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_corpus(), vocab_size=400, min_frequency=2, show_progress=False,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"])
    tok.save(str(path / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", pad_token="<pad>")


def make_causal_lm(family_name: str, path: Path, chat_template: bool = True, seed: int = 0, **overrides) -> Path:
    """A tiny random causal LM of a registered decoder family with a byte-level BPE tokenizer (ChatML)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgeshrink.models.arch import unique_families

    family = next(f for f in unique_families("decoder") if f.name == family_name)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _decoder_bpe(path)
    if chat_template:
        tokenizer.chat_template = CHATML
    settings = {**family.test_config, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id, **overrides}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family.model_types[0], **settings)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
