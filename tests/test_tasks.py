"""The task registry (src/edgeshrink/tasks.py) and the runtime's table agree, every entry resolves, and
dispatch and refusals are generated from the entries."""

import pytest

from edgeshrink import tasks
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.tasks import RUNTIME_TASKS


def test_registry_and_runtime_table_list_the_same_tasks():
    assert set(tasks.TASKS) == set(RUNTIME_TASKS)


@pytest.mark.parametrize("verb,impl", [(v, i) for v in tasks._IMPLEMENTATIONS for i in tasks.implementations(v).values()],
                         ids=lambda x: x if isinstance(x, str) else x.task)
def test_every_implementation_resolves(verb, impl):
    assert callable(impl.function())
    if impl.config:
        cls = impl.config_class()
        try:
            default = cls()
        except ValueError:  # a config with no usable default (a required choice): built by its verb's tests
            default = None
        if default is not None:
            assert cls.from_json(default.to_json()) == default  # configs round-trip
        for flag, name in impl.flags.items():
            assert flag.startswith("--") and (not name or name in cls.model_fields), (flag, name)


def test_a_verb_that_does_not_apply_is_refused_naming_what_does():
    with pytest.raises(EdgeshrinkError, match="distill does not apply to a tensor-classification model.*it takes.*finetune"):
        tasks.named("tensor-classification").implementation("distill")


def test_model_recognition(tmp_path):
    assert tasks.of_model("smollm2").name == "text-generation"
    assert tasks.of_model("digits-cnn").name == "tensor-classification"
    assert tasks.of_model("minilm").name == "text-classification"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert tasks.of_model(gguf).name == "text-generation"


def test_unknown_task_is_one_line():
    with pytest.raises(EdgeshrinkError, match="unknown task 'audio'"):
        tasks.named("audio")


def test_families_lists_every_task_and_where_its_verbs_live():
    table = tasks.tasks_table()
    for name, task in tasks.TASKS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][3:]
        assert sum(c.startswith("`") for c in cells) == len(task.verbs())  # a module per verb it takes
        assert sum(c == "-" for c in cells) == len(cells) - len(task.verbs())


def test_families_command_reads_at_100_columns_with_the_short_names():
    import json

    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from edgeshrink.models import arch
    from edgeshrink.models.llm import LLM_PACKAGES
    from edgeshrink.models.sources import MODEL_PACKAGES

    result = CliRunner().invoke(app, ["families", "--json", "-"])
    assert result.exit_code == 0, result.output
    text, data = result.stdout[:result.stdout.index("\n{")], json.loads(result.stdout[result.stdout.index("\n{"):])
    assert max(len(line) for line in text.splitlines()) <= 100 and "|---" not in text
    blocks = {block.splitlines()[0].split(":")[0]: block for block in text.split("\n\n")}
    for task in data["tasks"]:  # JSON: as before, plus short_names
        assert {"task", "summary", "model", "verbs", "short_names"} <= set(task)
        assert f"short names:    {', '.join(task['short_names']) or '-'}" in blocks[task["task"]]
        assert all(f"    {verb:<14}" in blocks[task["task"]] for verb in task["verbs"])
    for family in data["families"]:
        assert {"name", "label", "model_types", "operations", "short_names"} <= set(family)
        assert family["label"] in blocks
    # every short name edgeshrink resolves is shown, with its task and (a transformer) its family
    assert set(arch.SHORT_NAMES) == set(MODEL_PACKAGES) | set(LLM_PACKAGES)
    assert {"minilm", "smollm2", "gemma3-270m", "digits-cnn"} <= {n for t in data["tasks"] for n in t["short_names"]}
    assert {"minilm": "BERT (MiniLM)", "smollm2": "Llama (SmolLM2)", "gemma3-270m": "Gemma 3 (text)"} == {
        n: f["label"] for f in data["families"] for n in f["short_names"]}
