import json

import pytest
from typer.testing import CliRunner

from msctr.cli import app
from msctr.errors import UserError
from msctr.recipe import recipe_from_dict

runner = CliRunner()

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


def test_ablate_prints_table_with_p_values(recipe):
    result = runner.invoke(app, ["ablate", str(recipe), "--drop", "mi", "--drop", "i+e"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "HierRec w/o mi" in result.output and "HierRec w/o i+e" in result.output
    run = recipe.parent / "run-ablate"
    res = json.loads((run / "results.json").read_text())
    rows = {r["model"]: r for r in res["models"]}
    assert set(rows) == {"HierRec", "HierRec w/o mi", "HierRec w/o i+e"}
    for name in ("HierRec w/o mi", "HierRec w/o i+e"):
        assert rows[name]["test"]["reference"] == "HierRec"
        assert 0.0 <= rows[name]["test"]["welch_p"] <= 1.0
    assert (run / "ablation.png").stat().st_size > 1000
    assert (run / "HierRec_w_o_mi" / "seed_1" / "predictions.parquet").is_file()
    # HierRec's head-by-field weights per scenario (paper Figure 6) from run.json
    heads = json.loads((run / "HierRec" / "seed_0" / "run.json").read_text())["model_report"]
    assert len(heads["head_weights"][0]) == 2  # G heads
    assert (run / "head_weights_HierRec.png").stat().st_size > 1000
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
