import json
from pathlib import Path

import pytest
import yaml
from conftest import invoke, run_main
from scipy import stats as sps

from msctr.config import parse_value
from msctr.evaluate.report import ModelRuns
from msctr.recipe import recipe_from_dict
from msctr.sweep import against_best, axis_kind, plan, split_values

RECIPE = """
name: swp
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [32]}}}}
  - {{name: hierrec, label: HierRec, params: {{embed_dim: 8, heads: 2}}}}
train: {{batch_size: 256, epochs: 2, seeds: [0, 1]}}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("swp")
    path = root / "swp.yaml"
    path.write_text(RECIPE.format(data=data_dir, out=root / "run"))
    return path


def test_smoke_sweep_writes_table_results_report_and_figure(recipe):
    result = invoke("sweep", str(recipe), "--vary", "models.HierRec.params.heads=1,2,4", "--smoke")
    out = result.output
    assert "Sensitivity of HierRec" in out and "heads" in out and "(best)" in out
    assert "p (vs best)" in out and "DeLong" in out  # one seed under --smoke: DeLong's test
    assert "Bayes ceiling" in out  # planted-signal data: the ceiling row, as in eval
    sweep = recipe.parent / "run-smoke-sweep-HierRec-heads"
    # the recipe's own run folder is another folder, untouched
    assert not (recipe.parent / "run-smoke").exists()
    res = json.loads((sweep / "results.json").read_text())
    assert res["key"] == "models.HierRec.params.heads" and res["param"] == "heads"
    assert res["values"] == [1, 2, 4] and res["axis"] == "log"
    assert [p["text"] for p in res["points"]] == ["1", "2", "4"]
    best = res["best"]
    assert res["best_value"] == res["points"][best]["text"]
    aucs = [p["auc"]["mean"] for p in res["points"]]
    assert aucs[best] == max(aucs)
    for i, p in enumerate(res["points"]):
        assert p["seeds"] == [0]
        if i == best:
            assert p["test"] is None
        else:
            assert p["test"]["reference"] == res["best_value"]
            assert 0.0 <= p["test"]["delong_p"] <= 1.0
        # each value is an ordinary run folder of one model: msctr eval reads it
        run = sweep / p["text"]
        assert (run / "HierRec" / "seed_0" / "predictions.parquet").is_file()
        assert not (run / "DNN").exists()
        assert json.loads((run / "results.json").read_text())["models"][0]["model"] == "HierRec"
        assert json.loads((run / "HierRec" / "seed_0" / "run.json").read_text())["model_report"][
            "head_weights"
        ][0].__len__() == int(p["text"])  # G heads were really built
    report = (sweep / "report.md").read_text()
    assert "## Sensitivity" in report and "![test AUC against heads](sweep.png)" in report
    assert "| heads |" in report and "(best)" in report
    png = (sweep / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(sweep / "sweep.png", format="png")
    assert img.shape[:2] == (round(3.6 * 120), round(4.8 * 120)) and img[..., :3].std() > 0.05


def test_train_key_needs_model_and_a_rerun_keeps_finished_values(recipe, capsys):
    code, _, err = run_main(capsys, "sweep", str(recipe), "--vary", "train.lr=1e-3,2e-3")
    assert code == 1 and "--model LABEL" in err and len(err.strip().splitlines()) == 1
    args = ["sweep", str(recipe), "--vary", "train.lr=1e-3,2e-3", "--model", "DNN", "--smoke"]
    invoke(*args)
    sweep = recipe.parent / "run-smoke-sweep-DNN-train.lr"
    res = json.loads((sweep / "results.json").read_text())
    assert res["values"] == [0.001, 0.002] and res["axis"] == "log"
    recorded = [yaml.safe_load((sweep / t / "recipe.yaml").read_text()) for t in ("1e-3", "2e-3")]
    lrs = [recipe_from_dict(r).train.lr for r in recorded]
    assert lrs == [0.001, 0.002]
    ckpt = sweep / "1e-3" / "DNN" / "seed_0" / "best.pt"
    before = ckpt.stat().st_mtime_ns
    again = invoke(*args)  # resumes as train does: the finished runs are kept
    assert "finished earlier" in again.output and ckpt.stat().st_mtime_ns == before
    assert (sweep / "sweep.png").is_file()


@pytest.mark.parametrize(
    "vary, needle",
    [
        ("models.HierRec.params.headz=1,2", "unknown key 'models.1.params.headz'"),
        ("models.HierRec.params.heads=1,0", "heads must be at least 1, got 0"),
        ("models.1.params.embed_dim=8,9", "embed_dim 9 must be divisible by heads 2"),
        ("models.7.params.heads=1,2", "the recipe has 2 model(s)"),
        ("models.MMoE.params.heads=1,2", "'MMoE' is not in the recipe"),
        ("models.HierRec.params.heads=2", "give at least two values"),
        ("models.HierRec.params.heads=1,1.0", "given more than once"),
        ("models.HierRec.params.heads=1,2.5", "must be an integer, got 2.5"),
        ("train.seeds=[0],[1]", "names the run"),
        ("eval.significance=0.05,0.01", "one test set and one evaluation"),
        ("models.HierRec.params.drop=[],[mi],[]", "given more than once"),
        ("models.HierRec.params.heads=2,2.0e0", "given more than once"),
        ("train.lrr=1,2", "unknown key 'swp.train.lrr': did you mean 'lr'?"),
        ("heads", "expects KEY=V1,V2"),
    ],
)
def test_bad_key_or_value_is_one_line_and_writes_nothing(recipe, capsys, vary, needle):
    before = sorted(p.name for p in recipe.parent.iterdir())
    code, out, err = run_main(capsys, "sweep", str(recipe), "--vary", vary, "--model", "HierRec")
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in out + err
    assert sorted(p.name for p in recipe.parent.iterdir()) == before


def test_model_flag_and_key_must_agree():
    r = recipe_from_dict(
        {"name": "x", "data": "d", "models": [{"name": "dnn"}, {"name": "hierrec"}]}
    )
    with pytest.raises(Exception, match="names dnn, but --model is hierrec"):
        plan(r, "models.0.params.hidden=[8],[16]", "hierrec")
    p = plan(r, "models.hierrec.params.heads=1,2", None)
    assert p.label == "hierrec" and p.path == "models.0.params.heads"
    assert [pt.recipe.models[0].params["heads"] for pt in p.points] == [1, 2]
    assert p.folder == Path("runs/x-sweep-hierrec-heads")
    assert [pt.folder for pt in p.points] == [p.folder / "1", p.folder / "2"]


def test_p_value_against_the_best_is_scipys_welch():
    def runs(key: str, aucs: list[float]) -> ModelRuns:
        rows = [{"auc": a} for a in aucs]
        return ModelRuns(key, "hierrec", [0, 1, 2], rows, Path("unused"))

    values = {
        "1": [0.701, 0.704, 0.699],
        "2": [0.712, 0.709, 0.713],
        "4": [0.715, 0.718, 0.714],  # the best
        "8": [0.713, 0.716, 0.710],
    }
    points = [runs(k, v) for k, v in values.items()]
    best, tests = against_best(points, alpha=0.05)
    assert best == 2 and tests[2] is None
    for (_key, aucs), t in zip(values.items(), tests):
        if t is None:
            continue
        want = sps.ttest_ind(aucs, values["4"], equal_var=False).pvalue
        assert t["reference"] == "4"
        assert t["welch_p"] == pytest.approx(want, abs=1e-12)
        assert t["significant"] == (want < 0.05)
    assert tests[0]["significant"] and not tests[3]["significant"]


def test_values_parse_as_yaml_scalars_and_choose_the_axis():
    assert split_values("1,2,4") == ["1", "2", "4"]
    assert split_values("[64], [64,32]") == ["[64]", "[64,32]"]
    assert [parse_value(t, "--vary") for t in ("1", "1e-3", "2.5e-4", "true", "relu", "[8,4]")] == [
        1, 0.001, 0.00025, True, "relu", [8, 4],
    ]  # fmt: skip
    assert axis_kind([1, 2, 4, 8]) == "log"
    assert axis_kind([1e-4, 1e-3, 1e-2]) == "log"
    assert axis_kind([1, 2, 3, 4]) == "linear"
    assert axis_kind([1, 2, 3, 5]) == "categorical"
    assert axis_kind(["relu", "gelu"]) == "categorical"
    assert axis_kind([[64], [64, 32]]) == "categorical"
