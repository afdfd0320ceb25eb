"""The training loop's speed options: bf16 autocast (matmuls in bf16, weights in fp32, finite
outputs) and training with bf16 and row-sparse embeddings through the CLI."""

import json

import torch
from conftest import THREE_MODELS_RECIPE, invoke, make_batch, make_schema

from msctr.models.registry import build, split_output
from msctr.train.runtime import autocast

# -- bf16 autocast -------------------------------------------------------------------------


def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_fp32_weights():
    schema = make_schema()
    model = build("dnn", schema, {"hidden": [32]})
    b = make_batch(schema, 32)
    with autocast(torch.device("cpu"), "bf16"):
        out = model(b)
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with autocast(torch.device("cpu"), "fp32"):
        assert model(b).dtype == torch.float32


def test_model_output_through_autocast_is_finite():
    schema = make_schema()
    model = build("hierrec", schema, {})
    b = make_batch(schema, 16)
    with autocast(torch.device("cpu"), "bf16"):
        logit, _ = split_output(model(b))
    assert torch.isfinite(logit.float()).all()


def test_training_options_bf16_and_sparse_embeddings(data_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(THREE_MODELS_RECIPE.format(data=data_dir, out=tmp_path / "run"))
    invoke(
        "train", str(recipe), "--smoke", "--no-eval",
        "--set", f"out={tmp_path / 'o'}",
        "--set", "train.precision=bf16",
        "--set", "train.sparse_embeddings=true",
    )  # fmt: skip
    log = (tmp_path / "o-smoke" / "DNN" / "seed_0" / "log.jsonl").read_text().splitlines()
    assert json.loads(log[0])["val_auc"] > 0.5
