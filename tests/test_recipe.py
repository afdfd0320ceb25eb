import pytest

from msctr.errors import UserError
from msctr.recipe import load_recipe

BASE = """
name: r
data: data/x
models:
  - {name: dnn, params: {hidden: [32]}}
train: {lr: 1e-3, seeds: [0, 1]}
"""


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_valid_recipe_and_overrides(tmp_path):
    r = load_recipe(
        write(tmp_path, BASE),
        ["train.lr=0.01", "train.seeds=[3,4,5]", "models.0.params.dropout=0.3"],
    )
    assert r.train.lr == 0.01 and r.train.seeds == [3, 4, 5]
    assert r.models[0].params["dropout"] == 0.3
    assert r.run_dir.as_posix() == "runs/r"


def test_smoke_shrinks(tmp_path):
    r = load_recipe(write(tmp_path, BASE), smoke=True)
    assert r.train.seeds == [0] and r.train.epochs == 1 and r.train.max_steps_per_epoch == 5
    assert r.name == "r-smoke"


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE.replace("lr:", "lrr:"), "unknown key 'r.train.lrr': did you mean 'lr'"),
        (BASE.replace("hidden:", "hiden:"), "unknown key 'models.0.params.hiden'"),
        (BASE.replace("name: dnn", "name: dnnn"), "unknown model 'dnnn'"),
        (BASE.replace("seeds: [0, 1]", "seeds: oops"), "seeds must be a list"),
        (BASE.replace("lr: 1e-3", "lr: fast"), "lr must be a number"),
        (BASE + "\nfoo: 1\n", "unknown key 'r.foo'"),
        (BASE.replace("params: {hidden: [32]}", "params: {drop: [rtm]}"), "no ablation switch"),
        ("name: r\ndata: [", "not valid YAML"),
        (BASE + "eval: {metrics: [auc, ndcg]}\n", "unknown metric"),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as e:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_bad_override(tmp_path):
    with pytest.raises(UserError, match="key=value"):
        load_recipe(write(tmp_path, BASE), ["train.lr"])
