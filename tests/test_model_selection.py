"""Model selection in the training loop: early stopping on the validation split, the best
checkpoint restored before the test split is scored, and no way for the test split to steer
the choice.

The validation curve is controlled: `msctr.train.loop.predict` is replaced by a stand-in
that, on the validation rows, returns scores built to give a chosen AUC and logloss at each
epoch (and records the model's weights at that moment), and on any other rows is the real
`predict`. Training itself is real (a tiny DNN on 3,000 synthetic rows), so the weights
differ from epoch to epoch and a wrong checkpoint gives different test predictions.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from msctr.data.loader import load_columns
from msctr.data.schema import Schema
from msctr.models.registry import build
from msctr.recipe import recipe_from_dict
from msctr.train import loop
from msctr.train.splits import SplitData

MODEL = {"name": "dnn", "params": {"embed_dim": 4, "hidden": [16], "dropout": 0.0}}

# Validation scores per epoch: p = sigmoid(T * (q * (2y - 1) + z) + b), z ~ N(0, 1) fixed.
# q sets the ranking quality (AUC); T and b spoil the calibration (logloss) of one epoch, so
# the two metrics disagree about which epoch is best.
#   AUC:     .677 .763 .725 .867 .803 .785 .743 .702   best epoch 4 (epoch 3 is a dip)
#   logloss: .549 .484 .516 .872 .453 .468 .500 .532   (min at 5: reading logloss misleads)
AUC_SCHEDULE = [(0.4, 1, -1), (0.6, 1, -1), (0.5, 1, -1), (0.9, 3, 2),
                (0.7, 1, -1), (0.65, 1, -1), (0.55, 1, -1), (0.45, 1, -1)]  # fmt: skip
#   logloss: .549 .484 .802 .425 .453 .468 .500 .532   best epoch 4 (epoch 3 is a spike)
#   AUC:     .677 .763 .932 .837 .803 .785 .743 .702   (max at 3: reading AUC misleads,
#                                                       and so does maximizing logloss)
LOGLOSS_SCHEDULE = [(0.4, 1, -1), (0.6, 1, -1), (1.2, 4, 3), (0.8, 1, -1),
                    (0.7, 1, -1), (0.65, 1, -1), (0.55, 1, -1), (0.45, 1, -1)]  # fmt: skip
SCHEDULES = {"auc": AUC_SCHEDULE, "logloss": LOGLOSS_SCHEDULE}

# (patience, epochs) -> (epochs run, best epoch, `best` flags of log.jsonl); the same for both
# schedules: improvements at epochs 1, 2 and 4 only
EXPECTED = {
    (1, 8): (3, 2, [True, True, False]),
    (2, 8): (6, 4, [True, True, False, True, False, False]),
    (3, 8): (7, 4, [True, True, False, True, False, False, False]),
    (9, 8): (8, 4, [True, True, False, True, False, False, False, False]),
}


def scheduled_scores(y: np.ndarray, schedule) -> list[np.ndarray]:
    z = np.random.default_rng(0).normal(size=len(y))
    sign = 2.0 * y - 1.0
    return [1.0 / (1.0 + np.exp(-(t * (q * sign + z) + b))) for q, t, b in schedule]


def make_recipe(data: Path, out: Path, metric: str, patience: int, epochs: int = 8):
    return recipe_from_dict(
        {
            "name": "sel",
            "data": str(data),
            "out": str(out),
            "models": [copy.deepcopy(MODEL)],
            "train": {
                "batch_size": 256,
                "epochs": epochs,
                "lr": 0.01,
                "max_steps_per_epoch": 4,
                "seeds": [0],
                "early_stopping": {"metric": metric, "patience": patience},
            },
        }
    )


def same_rows(a, b) -> bool:
    return len(a) == len(b) and torch.equal(a.label, b.label) and torch.equal(a.sparse, b.sparse)


class ScheduledPredict:
    """Stands in for loop.predict. On the validation rows: the next epoch's scheduled scores,
    and a copy of the weights the model has at that moment. On the test rows: the real
    predict. Every call is recorded as "val" or "test" (or "other")."""

    def __init__(self, folder: Path, schedule):
        schema = Schema.load(folder)
        self.val = load_columns(folder, "val", schema)
        self.test = load_columns(folder, "test", schema)
        self.scores = scheduled_scores(self.val.label.numpy().astype(int), schedule)
        self.states: list[dict] = []
        self.calls: list[str] = []
        self.real = loop.predict

    def __call__(self, model, data, batch_size, device, precision="fp32", stop=None, pace=None):
        if same_rows(data, self.val):
            self.calls.append("val")
            self.states.append(copy.deepcopy(model.state_dict()))
            return self.scores[len(self.states) - 1].copy()
        self.calls.append("test" if same_rows(data, self.test) else "other")
        return self.real(model, data, batch_size, device, precision, stop, pace)


def fit(recipe, run_dir: Path) -> dict:
    data = SplitData.load(recipe)
    return loop.fit_one(recipe, recipe.models[0], 0, data, run_dir)


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def real_test_predictions(folder: Path, state: dict) -> np.ndarray:
    schema = Schema.load(folder)
    model = build(MODEL["name"], schema, MODEL["params"])
    model.load_state_dict(state)
    test = load_columns(folder, "test", schema)
    return loop.predict(model, test, 8192, torch.device("cpu"))


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_schedules_disagree_across_metrics_as_designed(data_dir, metric):
    """The fixture itself: each schedule's best epoch by its own metric is 4, and both the
    other metric and the wrong direction point elsewhere (so a mix-up cannot pass)."""
    y = pl.read_parquet(data_dir / "val.parquet")["label"].to_numpy()
    scores = scheduled_scores(y, SCHEDULES[metric])
    aucs = np.array([roc_auc_score(y, p) for p in scores])
    lls = np.array([log_loss(y, p) for p in scores])
    own = aucs if metric == "auc" else -lls
    assert int(np.argmax(own)) == 3
    # improvements (running best) at epochs 1, 2, 4 only
    running = [bool(own[i] > own[:i].max()) if i else True for i in range(len(own))]
    assert running == [True, True, False, True, False, False, False, False]
    other = -lls if metric == "auc" else aucs  # the other metric, higher = better
    assert int(np.argmax(other)) != 3
    assert int(np.argmax(-own)) != 3  # the metric read in the wrong direction


@pytest.mark.parametrize("metric", ["auc", "logloss"])
@pytest.mark.parametrize("patience", [1, 2, 3, 9])
def test_early_stopping_follows_the_validation_curve(
    data_dir, tmp_path, monkeypatch, metric, patience
):
    fake = ScheduledPredict(data_dir, SCHEDULES[metric])
    monkeypatch.setattr(loop, "predict", fake)
    recipe = make_recipe(data_dir, tmp_path, metric, patience)
    run_dir = tmp_path / "run"
    summary = fit(recipe, run_dir)
    ran, best, flags = EXPECTED[(patience, 8)]
    log = read_log(run_dir)
    assert [line["epoch"] for line in log] == list(range(1, ran + 1))
    assert [line["best"] for line in log] == flags
    assert summary["best_epoch"] == best
    assert json.loads((run_dir / "run.json").read_text())["best_epoch"] == best
    # the logged validation metrics are those of the scores the training loop was given
    y = fake.val.label.numpy().astype(int)
    for line, p in zip(log, fake.scores):
        assert line["val_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        ll = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))
        assert line["val_logloss"] == pytest.approx(ll, abs=1e-9)
    # the validation rows are scored once per epoch, the test rows once, after training
    assert fake.calls == ["val"] * ran + ["test"]


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_test_predictions_come_from_the_best_epoch(data_dir, tmp_path, monkeypatch, metric):
    fake = ScheduledPredict(data_dir, SCHEDULES[metric])
    monkeypatch.setattr(loop, "predict", fake)
    run_dir = tmp_path / "run"
    fit(make_recipe(data_dir, tmp_path, metric, patience=2), run_dir)
    best_state, last_state = fake.states[3], fake.states[-1]  # epoch 4 is best, 6 is last
    assert len(fake.states) == 6 and differs(best_state, last_state)
    saved = torch.load(run_dir / "best.pt", weights_only=True)
    assert saved.keys() == best_state.keys()
    assert not differs(saved, best_state), "best.pt does not hold the best epoch's weights"
    pred = pl.read_parquet(run_dir / "predictions.parquet")
    want = real_test_predictions(data_dir, best_state)
    last = real_test_predictions(data_dir, last_state)
    assert np.abs(want - last).max() > 1e-4  # the two checkpoints score the test rows apart
    np.testing.assert_allclose(pred["prob"].to_numpy(), want, rtol=1e-6, atol=1e-9)


def permuted_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    test = pl.read_parquet(src / "test.parquet")
    rng = np.random.default_rng(1)
    labels = test["label"].to_numpy()[rng.permutation(test.height)]
    test.with_columns(pl.Series("label", labels, dtype=test["label"].dtype)).write_parquet(
        dst / "test.parquet"
    )
    return dst


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_test_labels_cannot_influence_model_selection(data_dir, tmp_path, metric):
    """Permuting the test labels changes nothing about training or the choice of checkpoint:
    same validation curve, same best epoch, same best.pt, same test scores."""
    other = permuted_copy(data_dir, tmp_path / "permuted")
    runs = {}
    for name, folder in (("original", data_dir), ("permuted", other)):
        run_dir = tmp_path / name
        recipe = make_recipe(folder, run_dir, metric, patience=2, epochs=6)
        runs[name] = (fit(recipe, run_dir), run_dir)
    (s1, d1), (s2, d2) = runs["original"], runs["permuted"]
    p1 = pl.read_parquet(d1 / "predictions.parquet")
    p2 = pl.read_parquet(d2 / "predictions.parquet")
    assert not np.array_equal(p1["label"].to_numpy(), p2["label"].to_numpy())  # copy used
    assert s1["best_epoch"] == s2["best_epoch"]
    keys = ("epoch", "train_loss", "samples", "val_auc", "val_logloss", "best")  # no timings
    log1 = [{k: x[k] for k in keys} for x in read_log(d1)]
    log2 = [{k: x[k] for k in keys} for x in read_log(d2)]
    assert log1 == log2
    b1 = torch.load(d1 / "best.pt", weights_only=True)
    b2 = torch.load(d2 / "best.pt", weights_only=True)
    assert not differs(b1, b2)
    np.testing.assert_array_equal(p1["prob"].to_numpy(), p2["prob"].to_numpy())
