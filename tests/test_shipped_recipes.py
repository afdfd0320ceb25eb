"""Every recipe we ship must load: keys, model names, params and switches all valid; the
recipes the docs name exist; the synthetic recipes' models run on the synthetic data."""

import re
from pathlib import Path

import pytest
import torch

from msctr.data.loader import load_columns
from msctr.data.schema import Schema
from msctr.models.registry import build, get_spec, split_output
from msctr.recipe import load_recipe

ROOT = Path(__file__).parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))


def test_recipes_are_shipped():
    assert len(RECIPES) >= 7
    # every recipe the README and docs tell users to run is one of them
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        named |= set(re.findall(r"recipes/[\w-]+/[\w.-]+\.yaml", doc.read_text()))
    assert named, "the docs name no recipe"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"docs name recipes that are not shipped: {missing}"
    # the three papers' own setups
    for paper in ("kuairand/hierrec.yaml", "aliccp/sfpnet.yaml", "aliccp/hmdn.yaml"):
        assert ROOT / "recipes" / paper in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads(path):
    r = load_recipe(path)
    assert r.mirrors, "each recipe names the paper table it mirrors"
    for m in r.models:
        get_spec(m.name)


# the mechanism recipes run on synthetic data too (`prepare synthetic --structure`), whose
# schema is the default data's: the same fixture checks their models
SYNTHETIC = [p for p in RECIPES if p.parent.name in ("synthetic", "mechanisms")]


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_synthetic_recipes_models_run_on_synthetic_data(path, data_dir):
    """Each model of a synthetic recipe builds on the synthetic dataset (field names in its
    params exist there) and scores a batch of it with finite logits."""
    r = load_recipe(path)
    if path.parent.name == "mechanisms":  # data/mechanisms/<its structure>
        assert Path(r.data).parent.name == "mechanisms" and Path(r.data).name == path.stem
        assert r.mirrors and r.train.seeds == [0, 1, 2, 3, 4]
    else:
        assert Path(r.data).name == "synthetic"
    schema = Schema.load(data_dir)
    batch = next(load_columns(data_dir, "val", schema).batches(64))
    for m in r.models:
        torch.manual_seed(0)
        model = build(m.name, schema, m.params).eval()
        with torch.no_grad():
            logit, _ = split_output(model(batch))
        assert logit.shape == (64,) and torch.isfinite(logit).all(), m.key
