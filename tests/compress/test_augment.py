from edgeshrink.compress.augment import AugmentConfig, augment_texts

TEXTS = ["a truly wonderful , moving film about nothing .", "bad", "the plot was dull but the cast was great"]


def test_copies_are_deterministic_and_in_order():
    config = AugmentConfig(copies=3, seed=1)
    out = augment_texts(TEXTS, config, "[MASK]")
    assert len(out) == 9 and out == augment_texts(TEXTS, config, "[MASK]")
    assert out != augment_texts(TEXTS, AugmentConfig(copies=3, seed=2), "[MASK]")
    vocabulary = {w for t in TEXTS for w in t.split()} | {"[MASK]"}
    assert all(set(t.split()) <= vocabulary for t in out)  # only train words and the mask token


def test_copies_differ_from_their_text():
    out = augment_texts(TEXTS, AugmentConfig(copies=5, ngram_prob=0.0), "[MASK]")
    for i, text in enumerate(TEXTS):
        assert all(copy != text for copy in out[5 * i:5 * i + 5])


def test_ngram_copies_are_contiguous_pieces():
    out = augment_texts(TEXTS[2:], AugmentConfig(copies=20, ngram_prob=1.0, max_ngram=3), "[MASK]")
    for piece in out:
        assert 1 <= len(piece.split()) <= 3 and piece in TEXTS[2]


def test_no_copies():
    assert augment_texts(TEXTS, AugmentConfig(), "[MASK]") == []
