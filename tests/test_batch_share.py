"""One process and N (torchrun) train the same model only if every random number a model draws
per row of the batch goes through msctr's `RowRandom` modules (`Dropout`, `GaussianNoise`,
`GumbelSoftmax`; docs/models/README.md#adding-a-model): data parallel, each process then draws,
for its rows, the part of what one process draws for the whole batch. Checked here for every
registered model, in training mode, without processes: each share of a batch, forwarded as a
process of N would forward it (its `BatchShare` window, the same seed), gets the scores the
whole batch gives those rows."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import SMALL, make_batch, make_schema, rows_of
from torch import nn

from msctr.models.blocks import BatchShare, Dropout, share_batch
from msctr.models.registry import available, build, parse_params, split_output
from msctr.models.scenario import ScenarioBatchNorm
from msctr.train.distributed import part_bounds

ROWS, PARTS = 67, 3  # shares of 22, 22 and 23 rows


def with_randomness(name: str):
    """The model's small configuration with every dropout probability at 0.3 (so each
    dropout draws), other randomness (AESM2's gate noise, MARIA's Gumbel) at its default."""
    params = parse_params(name, SMALL.get(name, {}))
    drop = {f.name: 0.3 for f in dataclasses.fields(params) if "dropout" in f.name}
    return dataclasses.replace(params, **drop)


def batch_statistics_off(model: nn.Module) -> None:
    """Layers that normalise with the batch's statistics see a share's alone here (under
    torchrun they all-reduce them, `GlobalBatchNorm1d`): their running statistics instead."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm | ScenarioBatchNorm):
            m.eval()


def whole_and_shares(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(the whole batch's training-mode logits, the shares' concatenated), each forward from
    the same weights, buffers and seed."""

    def forward(rows: slice | None) -> torch.Tensor:
        m = copy.deepcopy(model)  # a forward may move buffers (AdaSparse's annealing)
        m.train()
        batch_statistics_off(m)
        share = BatchShare()
        share_batch(m, share)
        part = batch
        if rows is not None:
            share.window = (rows.start, rows.stop - rows.start, len(batch))
            part = rows_of(batch, rows)
        torch.manual_seed(7)
        with torch.no_grad():
            return split_output(m(part))[0]

    parts = [slice(*part_bounds(len(batch), r, PARTS)) for r in range(PARTS)]
    return forward(None), torch.cat([forward(p) for p in parts])


@pytest.mark.parametrize("name", available())
def test_every_models_randomness_follows_the_batch_share(name):
    schema = make_schema()
    torch.manual_seed(0)
    model = build(name, schema, with_randomness(name))
    whole, shares = whole_and_shares(model, make_batch(schema, ROWS, seed=1))
    torch.testing.assert_close(shares, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", available())
def test_no_model_uses_torchs_own_dropout(name):
    """nn.Dropout and its kin draw per element for the rows they are given: a share's mask
    is not the whole batch's. msctr's `Dropout` is what a model uses."""
    model = build(name, make_schema(), with_randomness(name))
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert plain == [], f"{name}: use msctr.models.blocks.Dropout at {plain}"


class _Net(nn.Module):
    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.linear, self.dropout = nn.Linear(4, 3), dropout

    def forward(self, batch) -> torch.Tensor:
        return self.dropout(self.linear(batch.dense)).sum(-1)


def test_the_check_catches_torchs_dropout():
    """The comparison above fails for a model with nn.Dropout, passes with msctr's."""
    batch = make_batch(make_schema(n_dense=4), ROWS, seed=1)
    torch.manual_seed(0)
    whole, shares = whole_and_shares(_Net(Dropout(0.3)), batch)
    torch.testing.assert_close(shares, whole)
    whole, shares = whole_and_shares(_Net(nn.Dropout(0.3)), batch)
    assert not torch.allclose(shares, whole)
