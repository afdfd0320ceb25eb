import json

import numpy as np
import pytest
from conftest import runner
from scipy import stats as sps

from msctr.cli import app
from msctr.errors import UserError
from msctr.recipe import recipe_from_dict


def read_png(path) -> np.ndarray:
    """The image as [height, width, RGB(A)] floats in [0, 1]; fails on a file that is no PNG."""
    import matplotlib.image

    img = matplotlib.image.imread(path, format="png")
    assert img.ndim == 3 and img[..., :3].std() > 0.05  # not blank
    return img


def has_colour(img: np.ndarray, hex_colour: str, min_pixels: int = 200) -> bool:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    close = np.abs(img[..., :3] - rgb).max(-1) < 2 / 255
    return int(close.sum()) >= min_pixels


RECIPE = """
name: abl
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [32]}}}}
  - {{name: hierrec, label: HierRec, params: {{embed_dim: 8, heads: 2}}}}
train: {{batch_size: 256, epochs: 1, max_steps_per_epoch: 8, seeds: [0, 1], eval_rows: 2000}}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    result = runner.invoke(
        app, ["prepare", "synthetic", "--out", str(root / "d"), "--rows", "5000"]
    )
    assert result.exit_code == 0, result.output
    path = root / "abl.yaml"
    path.write_text(RECIPE.format(data=root / "d", out=root / "run"))
    return path


@pytest.mark.slow
def test_ablate_prints_table_with_p_values(recipe):
    result = runner.invoke(app, ["ablate", str(recipe), "--drop", "mi", "--drop", "i+e"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "HierRec w/o mi" in result.output and "HierRec w/o i+e" in result.output
    run = recipe.parent / "run-ablate"
    res = json.loads((run / "results.json").read_text())
    rows = {r["model"]: r for r in res["models"]}
    assert set(rows) == {"HierRec", "HierRec w/o mi", "HierRec w/o i+e"}
    full_runs = rows["HierRec"]["auc"]["runs"]
    for name in ("HierRec w/o mi", "HierRec w/o i+e"):
        assert rows[name]["test"]["reference"] == "HierRec"
        assert 0.0 <= rows[name]["test"]["welch_p"] <= 1.0
        # the p-value of the variant's seeds against the full model's, as SciPy computes it
        runs = rows[name]["auc"]["runs"]
        assert len(runs) == len(full_runs) == 2
        want = sps.ttest_ind(runs, full_runs, equal_var=False).pvalue
        assert rows[name]["test"]["welch_p"] == pytest.approx(want, abs=1e-12)
    assert (run / "ablation.png").stat().st_size > 1000
    # the bar chart: 1.6 + 1.2 in per bar by 3.6 in at 120 dpi, the full model's bar in blue
    # and the variants' in grey
    bars = read_png(run / "ablation.png")
    assert bars.shape[:2] == (round(3.6 * 120), round((1.6 + 1.2 * 3) * 120))
    assert has_colour(bars, "#3b6ea8") and has_colour(bars, "#c0c7d0")
    assert (run / "HierRec_w_o_mi" / "seed_1" / "predictions.parquet").is_file()
    # HierRec's head-by-field weights per scenario (paper Figure 6) from run.json
    heads = json.loads((run / "HierRec" / "seed_0" / "run.json").read_text())["model_report"]
    assert len(heads["head_weights"][0]) == 2  # G heads
    assert (run / "head_weights_HierRec.png").stat().st_size > 1000
    # ablate resumes like train: every variant is a run, finished ones are kept; another
    # variant is added to the same folder
    result = runner.invoke(
        app, ["ablate", str(recipe), "--drop", "mi", "--drop", "i+e", "--drop", "e"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "kept HierRec w/o mi seed 1: finished earlier" in result.output
    assert "trained HierRec w/o e seed 0" in result.output
    again = {r["model"]: r for r in json.loads((run / "results.json").read_text())["models"]}
    assert again["HierRec"]["auc"]["runs"] == full_runs
    # heat map: (2 + 0.28 I) x (1 + 0.3 S G) inches at 110 dpi, one viridis cell per
    # (scenario, head, field): many distinct colours, not a blank or single-colour image
    n_fields, n_scen = len(heads["fields"]), len(heads["head_weights"])
    heat = read_png(run / "head_weights_HierRec.png")
    size = (round((1 + 0.3 * n_scen * 2) * 110), round((2 + 0.28 * n_fields) * 110))
    assert abs(heat.shape[0] - size[0]) <= 1 and abs(heat.shape[1] - size[1]) <= 1
    colours = np.unique((heat[..., :3] * 255).round().reshape(-1, 3), axis=0)
    assert len(colours) > 50
    assert "## Ablation" in (run / "report.md").read_text()


def test_unknown_switch_lists_the_models_switches(recipe):
    from msctr.ablate import ablation_recipe

    r = recipe_from_dict({"name": "x", "data": "d", "models": [{"name": "hierrec"}]})
    with pytest.raises(UserError, match="switches are: mi, i, e"):
        ablation_recipe(r, r.models[0], ["rtm"])


def test_drop_all_expands_to_every_switch():
    from msctr.ablate import variants
    from msctr.recipe import ModelEntry

    assert [g for _, g in variants(ModelEntry("hierrec"), ["all"])] == [["mi"], ["i"], ["e"]]


def test_ablation_of_a_label_with_parentheses_is_a_valid_recipe():
    from msctr.ablate import ablation_recipe

    r = recipe_from_dict(
        {"name": "x", "data": "d", "models": [{"name": "hmdn", "label": "HMDN(MMoE)"}]}
    )
    ablated = ablation_recipe(r, r.models[0], ["rq"])
    assert ablated.name == "x-ablate-HMDN_MMoE"
    again = recipe_from_dict(ablated.to_dict())  # what `msctr eval` reads back
    assert [m.key for m in again.models] == ["HMDN(MMoE)", "HMDN(MMoE) w/o rq"]


def test_with_baselines_keeps_the_recipes_other_models_after_the_variants():
    """The mechanism recipes' shape: the full model, each variant, then the strongest
    baseline, every one tested against the full model."""
    from msctr.ablate import ablation_recipe

    r = recipe_from_dict(
        {
            "name": "m",
            "data": "d",
            "models": [{"name": "mmoe", "label": "MMoE"}, {"name": "hierrec", "label": "HR"}],
        }
    )
    plain = ablation_recipe(r, r.models[1], ["all"])
    assert [m.key for m in plain.models] == ["HR", "HR w/o mi", "HR w/o i", "HR w/o e"]
    kept = ablation_recipe(r, r.models[1], ["all"], with_baselines=True)
    assert [m.key for m in kept.models] == [*(m.key for m in plain.models), "MMoE"]
    assert kept.models[-1].name == "mmoe" and kept.eval.baselines == ["HR"]
    again = recipe_from_dict(kept.to_dict())  # what `msctr eval` reads back
    assert [m.key for m in again.models] == [m.key for m in kept.models]
