"""A model's params are parsed once, when the recipe is read, and checked against the data's
schema once (`check_model`), with no model built; a model declares the report figure it adds."""

from __future__ import annotations

import json

import pytest
from conftest import make_schema

import msctr.recipe
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.evaluate import figures
from msctr.models.registry import check_model, get_spec, parse_params
from msctr.recipe import load_recipe, run_fingerprint


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("pepnet", {"prior_fields": ["nope"]}, "m.prior_fields: 'nope' is not a field"),
        ("pepnet", {"domain_fields": ["f0", "f0"]}, "m.domain_fields: field 'f0' is listed twice"),
        ("hmdn", {"distribution_fields": ["nope"]}, "m.distribution_fields: 'nope' is not a field"),
        ("sfpnet", {"sequences": ["nope"]}, "m.sequences names 'nope', which is not a sequence"),
        ("sfpnet", {"prior_fields": ["x0"]}, "m.prior_fields: 'x0' is not a sparse field"),
        ("wide_deep", {"cross_fields": [["f0", "nope"]]}, "m.cross_fields: 'nope' is not a sparse"),
    ],
)  # fmt: skip
def test_schema_checks_build_no_model(monkeypatch, name, params, message):
    cls = get_spec(name).cls
    monkeypatch.setattr(cls, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    p = parse_params(name, params, "m")
    with pytest.raises(UserError, match=message) as e:
        check_model(name, make_schema(), p, "m")
    assert "\n" not in str(e.value)


def test_checks_without_the_data_run_where_the_params_are_parsed():
    with pytest.raises(UserError, match="m.block_dims has 1 sizes but num_blocks is 3"):
        parse_params("sfpnet", {"num_blocks": 3, "block_dims": [8]}, "m")
    with pytest.raises(UserError, match="m.prior_fields is empty"):
        parse_params("pepnet", {"prior_fields": []}, "m")


def test_maria_needs_two_fields_for_feature_correlation():
    narrow = Schema(
        source="toy", num_scenarios=2, scenario_names=["a", "b"], sparse=[], dense=[],
        sequences=[], partition_fields=["scenario"], num_partitions=2,
    )  # fmt: skip
    p = parse_params("maria", {}, "m")
    check_model("maria", make_schema(), p, "m")
    with pytest.raises(UserError, match="feature correlation needs at least two fields"):
        check_model("maria", narrow, p, "m")
    check_model("maria", narrow, parse_params("maria", {"drop": ["fcm"]}, "m"), "m")


def test_params_are_parsed_once_when_the_recipe_is_read(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: d\nmodels: [{name: dnn, params: {hidden: [8]}}]\n")
    r = load_recipe(path)
    first = r.models[0].model_params
    monkeypatch.setattr(msctr.recipe, "parse_params", lambda *a, **k: pytest.fail("parsed again"))
    assert r.models[0].model_params is first and first.hidden == [8]
    fp = run_fingerprint(r, r.models[0], make_schema())
    assert fp["params"]["hidden"] == [8] and fp["params"]["embed_dim"] == 16


def write_run_json(path, report):
    path.write_text(json.dumps({"model_report": report}))
    return path


def test_a_model_declares_its_figure(tmp_path):
    weights = [[[0.5, 0.5], [0.25, 0.75]]] * 3  # [S, G, I]
    report = {"fields": ["f0", "f1"], "head_weights": weights}
    run = write_run_json(tmp_path / "run.json", report)
    names = ["s0", "s1", "s2"]
    path = figures.model_figure("hierrec", "HR", run, names, lambda stem: tmp_path / f"{stem}.png")
    assert path == tmp_path / "head_weights.png" and path.read_bytes()[:4] == b"\x89PNG"
    # a model without a declared figure, and HierRec without implicit heads, add none
    assert get_spec("dnn").figure is None
    assert figures.model_figure("dnn", "DNN", run, names, lambda s: tmp_path / "x.png") is None
    bare = write_run_json(tmp_path / "bare.json", {"fields": ["f0"]})
    assert figures.model_figure("hierrec", "HR", bare, names, lambda s: tmp_path / "y.png") is None
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
