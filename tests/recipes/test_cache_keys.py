"""The cache directory (NN-step-KEY) of every step of every candidate path of every shipped recipe.

A rerun over a cache made before a change reuses a step only if its key is unchanged, so these names are
pinned as literals (generated once, from the code before issue 26). A config split or renamed must keep
its ``to_dict()`` — and so these names — identical; a key changes only when what the step produces changes
(marked where it did). Nothing here loads a model or a data set: the steps are
planned, not run.
"""

from pathlib import Path

import pytest

from edgeshrink.recipes.runner import plan_paths
from edgeshrink.recipes.schema import load_recipe, recipe_kind

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def planned_dirs(path: Path) -> list[list[str]]:
    recipe, _ = load_recipe(path)
    _, kind = recipe_kind(recipe.task())
    return [[task.dir for task in plan.tasks] for plan in plan_paths(recipe, kind, recipe.candidates())]


EXPECTED = {
    'bbc-news-edge': [
        ['00-finetune-cda01a5770caa565',
         '01-export-877a28bd09a3f3d3',
         '02-quantize-f20ebfb39336a96b',
         '03-bench-6d62a90066abeaef',
         '04-route-5d51879c1696c184'],
        ['00-finetune-cda01a5770caa565',
         '01-export-566ef92fed47f5a1',
         '02-quantize-de69ddcd06a08538',
         '03-bench-fbcf2f89b6308118',
         '04-route-1b035beadaf7ab17'],
        ['00-finetune-cda01a5770caa565',
         '01-export-30f189eb098e6b71',
         '02-quantize-309f0e4430a1a30e',
         '03-bench-ce7ae2c6cc801640',
         '04-route-cb7c85467840acd4'],
    ],
    'digits-cnn': [
        ['00-finetune-1ee25cb1cadfd169',
         '01-prune-channels-486b2de8210245fe',
         '02-export-3978f78618ea8e9e',
         '03-quantize-1faf933873f5b710',
         '04-bench-76792dee1f843bd9'],
    ],
    'quick': [
        ['00-finetune-ce5558df399a045e',
         '01-prune-c943e4ea14455e85',
         '02-distill-26bf02bfeb6fe727',
         '03-export-3b3df2ea816ba5b7',
         '04-quantize-fc0992c8f547639d',
         '05-bench-bc8af1519504aba6',
         '06-route-1539cd850c364700'],
    ],
    'search4': [
        ['00-finetune-476ff7a5f302b09a',
         '01-prune-52b8187b2504aa59',
         '02-distill-1be623a55a445d60',
         '03-export-6273e1853cbaa443',
         '04-quantize-fcc233c3fac3a9dd',
         '05-bench-fbc6cf50050cfd9b'],
        ['00-finetune-476ff7a5f302b09a',
         '01-prune-cff8bf45132b9145',
         '02-distill-2787639e302b02fc',
         '03-export-3e0c0f53f1d8165a',
         '04-quantize-26fac26ca6f4355e',
         '05-bench-2256138ac38aaba7'],
        ['00-finetune-476ff7a5f302b09a',
         '01-prune-5ca5873bed5f519e',
         '02-distill-0d875df5b6b65cf1',
         '03-export-c27b1c2f93b70a26',
         '04-quantize-4757cee6490a3839',
         '05-bench-b0f2aaf30f7b0dd6'],
        ['00-finetune-476ff7a5f302b09a',
         '01-prune-ddbe5d8d6744b4fc',
         '02-distill-b6677f8881232560',
         '03-export-25dfa48a0f25ea9c',
         '04-quantize-7f6db3c3fde3386f',
         '05-bench-2b4bb9ca13963e43'],
    ],
    'sentiment-edge': [
        ['00-finetune-96f2a67f278451ac',
         '01-prune-a60d4577e0e972f9',
         '02-distill-f591f15963f5b746',
         '03-export-ee16288c0bfb3f2c',
         '04-quantize-e4e4118cecc4849a',
         '05-bench-073d37a7bef46e30',
         '06-route-7e4e207bdf6664b9'],
    ],
    'smollm2-edge': [
        ['00-import-8678247074bedfb0',
         '01-export-29861fc58e635df8',
         '02-quantize-044532a3561fc530',  # issue 28: --grid auto calibrates weights off a GGUF grid (step
         '03-bench-33b329c5d35ee1b5'],    # version 3), so quantize and what follows it run again
        # issue 27: the LLM bench also compares chat answers (a new config field), so a bench cached without
        # them runs again
    ],
    'smollm2-small': [
        ['00-import-8678247074bedfb0',
         '01-prune-441813e8a2dfa746',     # issue 28: the recipe was re-chosen (4 blocks, not 12; healed
         '02-distill-b6ae252134daae51',   # through its INT4 grid on 200k tokens; distill step version 2:
         '03-export-c619cc25836f533e',    # the GGUF's Q8_0 table kept), so every step after import is new
         '04-quantize-4049c0ac90c57879',
         '05-bench-483b9a0918d21011'],
    ],
}


def test_every_shipped_recipe_is_pinned():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cache_keys_are_unchanged(name):
    assert planned_dirs(RECIPES / f"{name}.yaml") == EXPECTED[name]
