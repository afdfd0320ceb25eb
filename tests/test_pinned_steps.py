"""Seeded training steps of every model, pinned: a refactor must not change what is computed.

The pins are the total training loss (BCE + aux) of the first three Adam steps of each model
with its default params, seed 0, one thread, on conftest's planted batches, run in float64:
the model is built as in training (fp32 initialisation, so the same weights) and then cast.

Why float64. In fp32 a last-bit difference between CPUs' vector units (AVX2 or AVX-512, AMD
or Intel, MKL's different kernels on each) is amplified by Adam's first steps, whose update
is about lr * sign(gradient) for gradients that are rounding noise, and by discrete choices
(HMDN's argmin over codes, AdaSparse's threshold, AESM2's top-k): HMDN's third fp32 loss
moved by 1.8e-5 relative on an Intel Xeon (AMX) against the AMD EPYC that pinned it. In
float64 the rounding is 1e-16 and the response to it is linear: weights perturbed by 1e-13 to
1e-7 relative move every pin by about the same relative amount or less (measured for every
model), so no near-tie and no amplification is within reach of a CPU's rounding. The pins are
compared to `TOL` (1e-10 relative); `test_last_bit_noise_moves_no_pin` shows 1e-12 of noise on
every weight (10^4 times float64's rounding unit) stays within it, and
`test_a_small_change_is_seen` that 1e-5 on the weights (far below any real change of
computation) fails it, for every model. Planted changes of computation each fail their
model's pin (checked with benchmarks/mutants.py's substitutions run against this file alone:
HMDN quantizing x_b again instead of the residual, SFPNet's tailoring returning its input,
PEPNet's EPNet gate not applied, MMoE's and STAR's scenario-0 routing).

The fp32 and bf16 paths (their own kernels, e.g. `grouped_mm` for PLE and STAR) are checked
against the float64 pins loosely: the first fp32 loss (the forward pass at initialisation, no
Adam step yet) to 1e-5, every bf16 loss to 5e-3 and visibly different from fp32's.

SFPNet's and MARIA's pins were taken again (issue 25) when their behavior sequences came to
be pooled by target attention on the candidate (MARIA: mean pooling before; SFPNet: the
query is now the mean of the candidate's fields the sequence's attributes share, not the
first attribute's field alone), on the same AMD EPYC with AVX-512.

HiNet's and HAMUR's pins (issue 30) were taken on the same AMD EPYC with AVX-512, torch 2.13.0+cpu.
HiNet's were taken again (issue 30, 2026-12-07) when its experts got BatchNorm by default
(`batch_norm: true`; with `batch_norm: false` the first steps are the old pins to the last
digit: the change is the default only). M2M's and SAR-Net's (issue 30) too, 2026-12-07;
1e-12 of noise moved them by 1.7e-13 and 6e-14 relative, 1e-5 by 1e-5 and 1e-4.
AdaptDHM's and M3oE's pins (issue 30) too; AdaptDHM routes each row to its nearest cluster
centre by argmax, so `test_adaptdhm_routes_have_no_near_ties` checks the margins as HMDN's.

CPUs the pins were checked on: AMD EPYC with AVX-512 (avx512_bf16, torch 2.13.0+cpu, numpy
2.4.6), 2026-12-06. The fp32 pins they replace (recorded on AMD EPYC AVX2 and AVX-512) had
failed on an Intel Xeon with AVX-512 and AMX (issue 22).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_schema, planted_batch

from msctr.models import hmdn
from msctr.models.registry import available, build, training_loss
from msctr.recipe import TrainConfig
from msctr.train.optim import make_optimizer
from msctr.train.runtime import autocast, seed_everything

TOL = 1e-10

PINNED = {
    "adaptdhm": [0.6790486670894228, 0.6853467711190459, 0.7044454529826949],
    "adasparse": [0.7215590256175842, 0.7295657165219184, 0.7355103794425921],
    "aesm2": [0.8210588494444653, 0.8093001377279171, 0.7884909181363984],
    "dcn": [0.6952224520092039, 0.6757104424029685, 0.6777879271774921],
    "deepfm": [0.7236117153996486, 0.6785855216806254, 0.700535228893936],
    "dnn": [0.6835721590257418, 0.6824842303216174, 0.6746984584270154],
    "hamur": [0.7673569901536544, 0.7349475532437284, 0.6952492023673982],
    "hierrec": [0.7870675368114548, 0.7159660314890621, 0.7152687819124575],
    "hinet": [0.6926246622756699, 0.6905248619494349, 0.6890530422997825],
    "hmdn": [0.7493596565695883, 0.6972397277057548, 0.6926090249542015],
    "m2m": [0.6575356154710477, 0.7265090388011239, 0.6678881532698154],
    "m3oe": [0.7039888498939646, 0.700456992245232, 0.6859174123084176],
    "maria": [0.6936925571329147, 0.6982970452964452, 0.7093402734614866],
    "mmoe": [0.7172064256870136, 0.6940684233795116, 0.6844984946087587],
    "pepnet": [0.6935021737467166, 0.686307760512013, 0.6924725078417335],
    "ple": [0.6936606293304293, 0.6898262594008054, 0.6825216502626466],
    "sarnet": [0.6928916913238801, 0.6671885977167186, 0.649347999938229],
    "sfpnet": [0.6931472181172569, 0.693051707324881, 0.692842193378147],
    "shared_bottom": [0.686285565722756, 0.6898321685818604, 0.6841210177598538],
    "star": [0.698801392980972, 0.6927067887833376, 0.6891809560600729],
    "wide_deep": [0.7237567340975647, 0.6783508590411227, 0.700410877769776],
}
# the other optimizer path: LazyAdam on row-sparse tables
PINNED_VARIANTS = {
    ("dnn", "sparse_embeddings", True): [
        0.6835721590257418,
        0.6824842303216174,
        0.6747173091119751,
    ],
}


def first_steps(
    name: str,
    dtype: torch.dtype = torch.float64,
    noise: float = 0.0,
    params: dict | None = None,
    **train,
) -> list[float]:
    """The total loss of the first three Adam steps; weights times (1 + noise * N(0, 1))."""
    schema = make_schema()
    seed_everything(0)
    model = build(name, schema, params or {}).to(dtype)
    if noise:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + noise * torch.randn(p.shape, generator=g, dtype=dtype))
    t = TrainConfig(**train)
    opt = make_optimizer(model, t)
    model.train()
    losses = []
    for step in range(3):
        b = planted_batch(schema, 128, seed=step)
        b.dense, b.label = b.dense.to(dtype), b.label.to(dtype)
        with autocast(torch.device("cpu"), t.precision):
            out = model(b)
        _, total = training_loss(out, b.label)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(total.item())
    return losses


def relative_gap(got: list[float], pinned: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(got, pinned, strict=True))


def test_every_model_is_pinned():
    assert sorted(PINNED) == available()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_first_steps_unchanged(name):
    assert first_steps(name) == pytest.approx(PINNED[name], rel=TOL)


@pytest.mark.parametrize("variant", sorted(PINNED_VARIANTS, key=str))
def test_optimizer_paths_unchanged(variant):
    name, key, value = variant
    got = first_steps(name, **{key: value})
    assert got == pytest.approx(PINNED_VARIANTS[variant], rel=TOL)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_last_bit_noise_moves_no_pin(name):
    """What a CPU's rounding can do, 10^4 times over, stays inside the tolerance."""
    assert relative_gap(first_steps(name, noise=1e-12), PINNED[name]) < TOL


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_small_change_is_seen(name):
    """The tolerance is not so wide that a change of computation could hide in it."""
    assert relative_gap(first_steps(name, noise=1e-5), PINNED[name]) > 10 * TOL


def test_hmdn_codes_have_no_near_ties(monkeypatch):
    """HMDN picks codes by argmin: on these inputs the nearest code of every row at every
    level is nearer than the runner-up by far more than rounding (which would flip it)."""
    gaps: list[float] = []
    nearest = hmdn._nearest

    def recording(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        dist = ((x.unsqueeze(-2) - codebook.detach().unsqueeze(-3)) ** 2).sum(-1)  # [..., B, K]
        two = dist.topk(2, dim=-1, largest=False).values
        gaps.append(float(((two[..., 1] - two[..., 0]) / two[..., 1]).min()))
        return nearest(x, codebook)

    monkeypatch.setattr(hmdn, "_nearest", recording)
    assert first_steps("hmdn") == pytest.approx(PINNED["hmdn"], rel=TOL)
    assert gaps and min(gaps) > 1e-9, min(gaps)


def test_adaptdhm_routes_have_no_near_ties(monkeypatch):
    """AdaptDHM sends each row to its most similar centre: on these inputs every row's best
    centre beats the runner-up by far more than rounding (which would flip it)."""
    from msctr.models import adaptdhm

    gaps: list[float] = []
    route = adaptdhm.DistributionRouter._route

    def recording(self, u: torch.Tensor) -> torch.Tensor:
        cluster = route(self, u)  # the centres are moved first in training
        two = self.similarity(u).topk(2, dim=1).values
        gaps.append(float((two[:, 0] - two[:, 1]).min()))
        return cluster

    monkeypatch.setattr(adaptdhm.DistributionRouter, "_route", recording)
    assert first_steps("adaptdhm") == pytest.approx(PINNED["adaptdhm"], rel=TOL)
    assert len(gaps) == 3 and min(gaps) > 1e-9, gaps


# AESM2 draws its gate noise in the model's dtype, so fp32 and fp64 draw different noise
SAME_DRAWS = {"aesm2": {"gate_noise": 0.0}}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_fp32_computes_the_pinned_model(name):
    params = SAME_DRAWS.get(name)
    reference = first_steps(name, params=params) if params else PINNED[name]
    got = first_steps(name, torch.float32, params=params)
    assert got[0] == pytest.approx(reference[0], rel=1e-5)


@pytest.mark.parametrize("name", ["star", "ple", "hinet", "m2m", "sarnet"])
def test_bf16_autocast_computes_the_pinned_model(name):
    """bf16 runs (grouped_mm, oneDNN or AMX kernels) differ from fp32 by bf16's rounding, not
    by a different model."""
    bf16 = first_steps(name, torch.float32, precision="bf16")
    fp32 = first_steps(name, torch.float32)
    assert bf16 == pytest.approx(PINNED[name], rel=5e-3)
    assert relative_gap(bf16, fp32) > 1e-6  # autocast really ran in bf16
