"""Tiny random-weight models and data built inside the tests: no downloads, a few seconds each."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

WORDS = ("good great fine nice lovely superb bad awful poor dull boring weak the a film movie plot actor scene "
         "story was is very not quite really and but it this that music ending cast").split()
POSITIVE = {"good", "great", "fine", "nice", "lovely", "superb"}


def make_tiny_bert(path: Path, labels=("negative", "positive"), max_positions: int = 128, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT classifier with a WordPiece tokenizer over WORDS, saved as an HF directory."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS) + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] \
        + list("abcdefghijklmnopqrstuvwxyz.,!?'")
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions,
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 20))]
        label = "positive" if sum(w in POSITIVE for w in words) >= sum(w in {"bad", "awful", "poor", "dull",
                                                                            "boring", "weak"} for w in words) else "negative"
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "tiny.csv", make_texts(200))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory) -> Path:
    from edgeshrink.export import ExportConfig, export

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export(tiny_model, out, ExportConfig(), force=True)
    return out


@pytest.fixture(scope="session")
def tiny_llm_bundle(tmp_path_factory) -> Path:
    """A tiny random llama language-model bundle with a ChatML chat template (context 128)."""
    from edgeshrink.export.llm import LLMExportConfig, export_llm
    from tests.families import make_causal_lm

    root = tmp_path_factory.mktemp("tiny-llm")
    export_llm(make_causal_lm("llama", root / "m"), root / "bundle",
               LLMExportConfig(validation_prompts=1, validation_new_tokens=4))
    return root / "bundle"


@pytest.fixture(scope="session")
def trained_bundle(tiny_model, tmp_path_factory):
    """A tiny model fine-tuned on a CSV named by its absolute path, and its bundle, both made from the CSV's
    directory: what they record of their data must not depend on that working directory. (csv, model, bundle)."""
    from edgeshrink.export import export
    from edgeshrink.models.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    data = write_csv(root / "data" / "data.csv", make_texts(300, seed=2))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(data.parent)
        finetune(tiny_model, root / "model", FinetuneConfig(epochs=1, batch_size=16, max_length=32), data=str(data))
        export(root / "model", root / "bundle")
    return data, root / "model", root / "bundle"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Tests never read the user's prepared data unless marked slow."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("EDGESHRINK_CACHE", str(tmp_path / "cache"))


TINY_CNN = {"channels": [8, 16], "hidden": [32]}


def make_tiny_cnn(path: Path, seed: int = 0, **architecture) -> Path:
    """An untrained conv(1→8)-conv(8→16)-pool-fc(256→32)-fc(32→10) CNN directory for 8x8 digits."""
    from edgeshrink.models.cnn import CNNConfig, init_cnn

    return init_cnn(CNNConfig(**{**TINY_CNN, **architecture}), [str(d) for d in range(10)], path, seed=seed)


@pytest.fixture(scope="session")
def digits_sample():
    """400 of the 1,797 digits (a fixed subset; split 280/60/60)."""
    from edgeshrink.data import DataConfig

    return DataConfig(source="digits", sample=400)


@pytest.fixture(scope="session")
def trained_cnn(tmp_path_factory, digits_sample) -> Path:
    from edgeshrink.models.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("cnn")
    finetune(make_tiny_cnn(root / "init"), root / "trained",
             FinetuneConfig(epochs=10, learning_rate=5e-3, batch_size=32, threads=1), data=digits_sample)
    return root / "trained"


@pytest.fixture(scope="session")
def cnn_bundle(trained_cnn, tmp_path_factory) -> Path:
    from edgeshrink.export import export

    out = tmp_path_factory.mktemp("cnn-bundles") / "fp32"
    export(trained_cnn, out)
    return out


@pytest.fixture
def start():
    """Start `edgeshrink ARGS` services as subprocesses (ServerProcess: waits for 'listening on'); all stopped
    at the end of the test."""
    from edgeshrink.serve.process import ServerProcess

    servers = []

    def _start(*args, env=None) -> ServerProcess:
        server = ServerProcess(list(args), env=env)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.__exit__()


# `make test` runs the suite in two passes: everything else on two pytest-xdist workers (`-n 2 --dist loadscope`:
# a module's fixtures stay on one worker), then these alone (`-m serial`), because they assert on time or on what
# the machine's timing decides, and a second worker's load would decide it for them: services with deadlines,
# breakers, micro-batching waits and rate limits, the Ray clusters (one at a time), prompt lookup's learnt draft
# budget, the chat template's render timeout, and the demo page's cloud deadline. (Node IDs, or their prefixes.)
SERIAL = ("tests/serve/test_app.py", "tests/serve/test_batcher.py", "tests/serve/test_cli.py",
          "tests/serve/test_cloud_client.py", "tests/serve/test_docs.py", "tests/serve/test_faults.py",
          "tests/serve/test_llm.py", "tests/serve/test_llm_routing.py", "tests/serve/test_oip.py",
          "tests/serve/test_ray_engine.py", "tests/serve/test_watch.py",
          "tests/recipes/test_ray_executor.py", "tests/recipes/test_ray_failover.py",
          "tests/runtime/test_speculative.py", "tests/runtime/test_chat_template.py",
          "tests/web/test_web.py::test_demo_page_in_chromium")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
    # the Ray recipe modules last (a stable sort keeps every module together): a stopped Ray cluster's processes,
    # the killed node's above all, take seconds to go, and a fault drill after them measured its deadlines on a
    # busy machine (seen failing); the Ray Serve module starts and stops its own cluster among the services
    items.sort(key=lambda item: item.nodeid.startswith("tests/recipes/test_ray_"))
