import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.schema import load_recipe

GOOD = """\
version: 1
name: tiny
model: {model}
data: {data}
steps:
  - prune: {{layers: 1, ffn_keep: 0.5, vocab: true}}
  - distill: {{epochs: 1, max_length: 32}}
  - export: {{}}
  - quantize: {{method: dynamic-int8}}
  - bench: {{threads: [1], seq_lengths: [16], throughput_batch_sizes: [4], latency_runs: 5, rounds: 1, warmup_runs: 1}}
targets:
  max_size_mb: 10
  max_latency_ms: {{value: 1000, threads: 1, seq_length: 16}}
  max_accuracy_drop: 50
  min_size_reduction: 1.5
  min_speedup: 0.1
  min_accuracy_fraction: 0.3
  peer: {{min_speedup: 0.1, min_size_reduction: 1.0, max_accuracy_drop: 60}}
"""


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_good_recipe_parses_into_the_api_configs(tmp_path):
    recipe, digest = load_recipe(write(tmp_path, GOOD.format(model="m", data="d.csv")))
    names = [name for name, _ in recipe.parsed_steps()]
    assert names == ["prune", "distill", "export", "quantize", "bench"] and len(digest) == 64
    assert type(recipe.parsed_steps()[0][1]).__name__ == "PruneConfig"
    assert recipe.targets.max_latency_ms.percentile == 50


@pytest.mark.parametrize("edit, message", [
    (("  - export: {}", "  - exprot: {}"), "line 8: steps.2: unknown step 'exprot'"),
    (("{layers: 1,", "{layerz: 1,"), "line 6: steps.0.prune.layerz: unknown key (did you mean 'layers'?) (PruneConfig)"),
    (("{epochs: 1,", "{epochs: many,"), "line 7: steps.1.distill.epochs: Input should be a valid integer"),
    (("max_size_mb: 10", "max_size_mb: -1"), "line 12: targets.max_size_mb: Input should be greater than 0"),
    (("name: tiny", "nmae: tiny"), "line 2: nmae: unknown key (did you mean 'name'?)"),
    (("  - prune: {layers: 1, ffn_keep: 0.5, vocab: true}\n", ""), "step 'distill' needs a 'prune' step"),
])
def test_bad_recipes_name_file_key_line_and_expectation(tmp_path, edit, message):
    path = write(tmp_path, GOOD.format(model="m", data="d.csv").replace(*edit))
    with pytest.raises(EdgeshrinkError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(EdgeshrinkError, match="line 2: not valid YAML"):
        load_recipe(write(tmp_path, "name: x\n  steps: [\n"))
    with pytest.raises(EdgeshrinkError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(EdgeshrinkError, match="latin1.yaml: a recipe is UTF-8 text"):
        load_recipe(tmp_path / "latin1.yaml")


def test_search_alternatives_are_validated(tmp_path):
    good = GOOD.format(model="m", data="d.csv")
    recipe, _ = load_recipe(write(tmp_path, good.replace("vocab: true}", "vocab: true, search: {layers: [1, 2]}}")))
    assert [choices for choices, _ in recipe.candidates()] == [{"steps.0.prune.layers": 1}, {"steps.0.prune.layers": 2}]
    for edit, message in ((("vocab: true}", "vocab: true, search: {layerz: [1, 2]}}"), "search.layerz: unknown key"),
                          (("vocab: true}", "vocab: true, search: {ffn_keep: [0.5, 2]}}"),
                           "steps.0.prune.search.ffn_keep: Input should be less than or equal to 1"),
                          (("vocab: true}", "vocab: true, search: {layers: 3}}"), "non-empty lists"),
                          (("vocab: true}", "vocab: true, search: {layers: [1, 2, 3, 4, 5, 6], ffn_keep: [.1, .2, .3, .4, .5, .6]}}"),
                           "36 candidate paths; at most 32")):
        with pytest.raises(EdgeshrinkError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(write(tmp_path, good.replace(*edit)))


CNN = """\
version: 1
name: cnn
model: digits-cnn
data: digits
steps:
  - finetune: {epochs: 1}
  - prune-channels: {channels_keep: 0.5}
  - export: {}
  - quantize: {method: static-int8}
  - bench: {threads: [1]}
targets:
  min_size_reduction: 2
"""


def test_cnn_recipe_parses_into_the_api_configs(tmp_path):
    recipe, _ = load_recipe(write(tmp_path, CNN))
    steps = recipe.parsed_steps()
    assert [name for name, _ in steps][:2] == ["finetune", "prune-channels"]
    assert type(steps[1][1]).__name__ == "ChannelPruneConfig" and steps[1][1].channels_keep == 0.5


@pytest.mark.parametrize("text, edit, message", [
    (CNN, ("  - prune-channels: {channels_keep: 0.5}", "  - distill: {epochs: 1}"),
     "line 7: steps.1: unknown step 'distill'; a tensor-classification recipe takes the steps finetune, "
     "prune-channels, export, quantize, bench"),
    (CNN, ("  - prune-channels: {channels_keep: 0.5}", "  - prune: {layers: 1}"), "unknown step 'prune'; a tensor-classification recipe"),
    (CNN, ("  - bench: {threads: [1]}", "  - bench: {threads: [1]}\n  - route: {policy: budget, budget: 0.3}"), "unknown step 'route'; a tensor-classification recipe"),
    (CNN, ("data: digits", "data: d.csv"),
     "line 4: data: model 'digits-cnn' is a CNN and takes images; 'd.csv' is not a built-in image data set (digits)"),
    (CNN, ("min_size_reduction: 2", "peer: {min_speedup: 1}"), "targets.peer: unknown key (a tensor-classification recipe)"),
    (CNN, ("prune-channels: {channels_keep: 0.5}", "prune-channels: {channels_kep: 0.5}"),
     "steps.1.prune-channels.channels_kep: unknown key (did you mean 'channels_keep'?) (ChannelPruneConfig)"),
    (GOOD.format(model="m", data="digits"), ("", ""), "data: 'digits' is images; model 'm' is a text model"),
    (GOOD.format(model="m", data="d.csv"), ("  - prune: {layers: 1, ffn_keep: 0.5, vocab: true}", "  - prune-channels: {}"),
     "unknown step 'prune-channels'; a text-classification recipe takes the steps finetune, prune, distill"),
])
def test_steps_and_data_must_fit_the_kind_of_model(tmp_path, text, edit, message):
    path = write(tmp_path, text.replace(*edit))
    with pytest.raises(EdgeshrinkError) as err:
        load_recipe(path)
    assert message in str(err.value), str(err.value)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" recipe: 9 levels of 9 aliases each, 9**9 strings once expanded, in under 1 KB."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    lines += [f"{name}: &{name} [{', '.join([f'*{prev}'] * width)}]" for prev, name in zip(names, names[1:])]
    return "version: 1\nname: bomb\nmodel: m\ndata: d.csv\n" + "\n".join(lines) + f"\nsteps: [*{names[-1]}]\n"


def test_an_alias_bomb_is_refused_in_one_line_before_it_expands(tmp_path):
    import time
    import tracemalloc

    text = alias_bomb()
    assert len(text) < 1024
    path = write(tmp_path, text)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(EdgeshrinkError) as err:
            load_recipe(path)
        seconds = time.perf_counter() - started
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"{path}: line 9: its aliases expand to more than 10000 nodes (an alias bomb?); "
                              f"write the values out instead of aliasing them")
    assert seconds < 1 and peak_bytes < 20e6, (seconds, peak_bytes)


@pytest.mark.parametrize("text, line", [
    ("[" * 20_000 + "]" * 20_000, 1),  # flow sequences
    ("steps: " + "{a: " * 20_000 + "1" + "}" * 20_000, 1),  # flow mappings
    ("- " * 20_000 + "x\n", 1),  # block sequences, each "- " one level deeper
    ("".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "x\n", 64),  # block mappings
    # aliases nest too: each one holds the one before, 200 levels once expanded
    ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200)), 63),
])
def test_deep_nesting_is_refused_in_one_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(EdgeshrinkError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: line {line}: nested deeper than 64 levels"


def test_a_recipe_with_a_few_aliases_still_loads(tmp_path):
    text = GOOD.format(model="m", data="d.csv").replace("max_length: 32}", "max_length: &len 32}")
    text = text.replace("seq_lengths: [16]", "seq_lengths: [*len, *len]").replace("seq_length: 16}", "seq_length: *len}")
    recipe, _ = load_recipe(write(tmp_path, text))
    steps = dict(recipe.parsed_steps())
    assert steps["bench"].seq_lengths == [32, 32] and recipe.targets.max_latency_ms.seq_length == 32
    # a mistake after an alias still names its line
    with pytest.raises(EdgeshrinkError, match="line 12: targets.max_size_mb"):
        load_recipe(write(tmp_path, text.replace("max_size_mb: 10", "max_size_mb: -1")))


def test_each_task_names_its_kind_of_recipe_and_every_step_config_resolves():
    from edgeshrink import tasks
    from edgeshrink.recipes.schema import Recipe, recipe_kind

    for name in tasks.implementations("recipe"):
        schema, kind = recipe_kind(name)
        assert issubclass(schema, Recipe) and kind.task == name
        assert all(kind.config_class(step) is not None for step in kind.steps)
