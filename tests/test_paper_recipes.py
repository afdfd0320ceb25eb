"""The paper recipes are the papers' tables: their rows in the paper's order, the baselines of
HMDN's table the same networks as HMDN's backbones, every row trainable on data prepared the
way the recipe says, and the paper's figures set beside ours on the paper's dataset only."""

import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import invoke, make_schema

from msctr.models.registry import build
from msctr.recipe import load_recipe
from msctr.testing.rawgen import write_aliccp, write_kuairand

ROOT = Path(__file__).parent.parent
PAPER_RECIPES = {
    "aliccp/hierrec.yaml": ["SharedBottom", "MMoE", "PLE", "STAR", "AdaSparse", "HierRec"],
    "kuairand/hierrec.yaml": ["SharedBottom", "MMoE", "PLE", "STAR", "AdaSparse", "HierRec"],
    "aliccp/sfpnet.yaml": [
        "BaseDNN", "DeepFM", "SharedBottom", "MMoE", "PLE", "STAR", "AESM2", "AdaSparse",
        "PEPNet", "MARIA", "SFPNet",
    ],
    "aliccp/hmdn.yaml": [
        "DNN", "DCN", "Wide&Deep", "SharedBottom", "PEPNet", "HMDN(PEPNet)", "MMoE", "HMDN(MMoE)",
    ],
    "aliccp/hmdn_extraction.yaml": ["MMoE", "MMoE+EXP", "MMoE+IMP"],
}  # fmt: skip
# recipes mirroring a benchmark's setup, model list and metrics without its figures (no
# `paper:` block)
BENCHMARK_RECIPES = {
    "kuairand/scenario_wise.yaml": [
        "SharedBottom", "MMoE", "PLE", "SAR-Net", "STAR", "M2M", "AdaSparse", "AdaptDHM",
        "EPNet", "PPNet", "HAMUR", "M3oE",
    ],
}  # fmt: skip


@pytest.mark.parametrize("path", BENCHMARK_RECIPES)
def test_benchmark_recipes_list_its_models_in_order(path):
    r = load_recipe(ROOT / "recipes" / path)
    assert [m.key for m in r.models] == BENCHMARK_RECIPES[path]
    assert r.prepare and r.prepare.startswith("msctr prepare ") and r.mirrors
    assert r.paper is None


def test_scenario_wise_recipe_prepares_the_benchmarks_setup():
    r = load_recipe(ROOT / "recipes/kuairand/scenario_wise.yaml")
    assert "--setup scenario-wise" in r.prepare and "--seq-len 0" in r.prepare
    assert r.eval.metrics == ["scenario_auc", "auc", "logloss"]
    assert r.train.early_stopping.metric == "auc" and r.train.batch_size == 4096


@pytest.mark.parametrize("path", PAPER_RECIPES)
def test_rows_are_the_papers_table_in_its_order(path):
    r = load_recipe(ROOT / "recipes" / path)
    assert [m.key for m in r.models] == PAPER_RECIPES[path]
    assert r.paper is not None and [row.model for row in r.paper.rows] == PAPER_RECIPES[path]
    assert r.prepare and r.prepare.startswith("msctr prepare ")
    assert r.mirrors and r.paper.source


def test_every_shipped_recipe_with_paper_figures_is_listed():
    with_paper = {
        str(p.relative_to(ROOT / "recipes"))
        for p in (ROOT / "recipes").glob("*/*.yaml")
        if load_recipe(p).paper is not None
    }
    assert with_paper == set(PAPER_RECIPES)


@pytest.mark.parametrize("backbone", ["MMoE", "PEPNet"])
def test_hmdn_rows_differ_from_their_baselines_by_the_quantizer_only(backbone):
    r = load_recipe(ROOT / "recipes/aliccp/hmdn.yaml")
    entry = {m.key: m for m in r.models}
    schema = make_schema()
    base = build(entry[backbone].name, schema, entry[backbone].params)
    full = build(entry[f"HMDN({backbone})"].name, schema, entry[f"HMDN({backbone})"].params)
    shapes = {n: tuple(p.shape) for n, p in full.named_parameters()}
    base_shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    assert type(base) is type(full)
    assert set(shapes) - set(base_shapes) == {"quantizer.codebook"}
    assert set(base_shapes) <= set(shapes)
    differ = {n for n in base_shapes if shapes[n] != base_shapes[n]}
    # MMoE's gate reads the code s_D [B, m*d] in HMDN (eq. 8) and all fields x [B, n*d] in
    # the plain MMoE (eq. 7): the one difference besides the codebook; PEPNet's gates read
    # s_D or x_b, both [B, m*d]
    assert differ == ({"gate.weight"} if backbone == "MMoE" else set())


def _prepare(recipe, raw: Path, out: Path) -> None:
    args = shlex.split(recipe.prepare)[1:]  # drop "msctr"
    args = [str(raw) if a == "RAW" else a for a in args]
    args[args.index("--out") + 1] = str(out)
    if args[1] == "kuairand":
        args += ["--raw-dir", str(raw)]
    invoke(*args)


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-raw")
    aliccp = write_aliccp(root / "aliccp", rows=3_000, seed=1, history=4)
    kuairand = write_kuairand(root / "kr" / "raw", rows=6_000, scenarios=7, seed=1, history=4)
    return {"aliccp": aliccp.folder, "kuairand": kuairand.folder.parent.parent}


@pytest.mark.slow
@pytest.mark.parametrize("path", [*PAPER_RECIPES, *BENCHMARK_RECIPES])
def test_smoke_trains_every_row_on_data_prepared_as_the_recipe_says(path, raw_data, tmp_path):
    torch.set_num_threads(1)
    recipe = load_recipe(ROOT / "recipes" / path)
    data = tmp_path / "data"
    _prepare(recipe, raw_data[path.split("/")[0]], data)
    run = tmp_path / "run"
    result = invoke(
        "train", str(ROOT / "recipes" / path), "--smoke",
        "--set", f"data={data}", "--set", f"out={run}",
    )  # fmt: skip
    for key in {**PAPER_RECIPES, **BENCHMARK_RECIPES}[path]:
        assert key in result.output
    if recipe.paper is not None:
        # generated raw files prepared as the paper did: the paper's figures beside ours
        assert "paper vs measured" in result.output
        assert "not shown" not in result.output
    else:  # every scenario's logloss is in results.json
        res = json.loads((tmp_path / "run-smoke" / "results.json").read_text())  # --smoke's
        n = len(res["scenarios"])
        assert all(f"logloss_s{n - 1}" in row for row in res["models"])
    # the paper's search space (msctr tune): every value of every key checked on this data
    searched = [m.key for m in recipe.models if m.search]
    if searched:
        from msctr.tune import plan

        tuned = load_recipe(ROOT / "recipes" / path, [f"data={data}"])
        assert [t.label for t in plan(tuned, None, "grid")] == searched
