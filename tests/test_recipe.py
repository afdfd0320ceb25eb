import re

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


# -- one key resolver and one value parser (issue 28) ---------------------------------------------

TWO = """
name: r
data: data/x
models:
  - {name: dnn, label: DNN}
  - {name: dnn, label: v1.2}
  - {name: mmoe}
"""


def test_a_model_is_named_by_index_or_label_alike(tmp_path):
    path = write(tmp_path, TWO)
    by_index = load_recipe(path, ["models.1.params.dropout=0.3", "models.2.params.dropout=0.2"])
    by_label = load_recipe(
        path, ["models.v1.2.params.dropout=0.3", "models.mmoe.params.dropout=0.2"]
    )
    assert by_index.models == by_label.models
    assert by_label.models[1].model_params.dropout == 0.3
    assert by_label.models[2].model_params.dropout == 0.2
    assert by_label.model_index("v1.2", "--model") == 1 == by_label.model_index("1", "--model")


@pytest.mark.parametrize(
    "override, message",
    [
        ("models.dnn.params.dropout=0.1", "--set models.dnn.params.dropout: 2 models are 'dnn' "
         "(DNN, v1.2); name one by its label or index"),
        ("models.MMoE.params.dropout=0.1",
         "'MMoE' is not in the recipe; its models: DNN, v1.2, mmoe"),
        ("models.3.params.dropout=0.1", "the recipe has 3 model(s), models.0 to models.2"),
        ("models.DNN.params.dropot=0.1", "unknown key 'models.0.params.dropot'"),
        ("train.seeds=[0, x]", "train.seeds.1 must be an integer, got 'x'"),
        ("models.DNN.params=[1", "--set models.DNN.params: value '[1' is not valid YAML"),
        ("train..lr=1", "'train..lr' is not a recipe key"),
        ("models.0.label.x=1", "--set models.0.label.x: no such place"),
    ],
)  # fmt: skip
def test_bad_keys_and_values_name_the_key_as_set_spells_it(tmp_path, override, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        load_recipe(write(tmp_path, TWO), [override])
    assert "\n" not in str(e.value) and "[" not in str(e.value).split(":")[0]


def test_set_reads_numbers_as_numbers(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["train.lr=2e-3", "train.weight_decay=1e-6"])
    assert r.train.lr == 0.002 and r.train.weight_decay == 1e-6
