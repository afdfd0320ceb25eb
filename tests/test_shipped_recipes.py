"""Every recipe we ship must load: keys, model names, params and switches all valid."""

from pathlib import Path

import pytest

from msctr.models.registry import get_spec
from msctr.recipe import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*/*.yaml"))


def test_recipes_are_shipped():
    assert len(RECIPES) >= 7


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads(path):
    r = load_recipe(path)
    assert r.mirrors, "each recipe names the paper table it mirrors"
    for m in r.models:
        get_spec(m.name)
