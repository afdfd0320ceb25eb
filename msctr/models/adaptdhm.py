"""AdaptDHM (Li, Zheng, Liu, Lu, Wu and Hu, "AdaptDHM: Adaptive Distribution Hierarchical
Model for Multi-Domain CTR Prediction", arXiv 2211.12105, 2022).

Two processes, end to end:

1. Clustering (the distribution adaptation module): each sample's field embeddings x are
   compared with K cluster centres c_k; a dynamic routing gives its distribution
   coefficients r_k = softmax_k(cos(x, c_k) / tau), and the sample goes to its argmax
   cluster. The centres are not trained by gradient: in training they follow the batch by a
   momentum update, c_k <- normalize(beta c_k + (1 - beta) normalize(sum_i r_ik x_i / |x_i|)),
   `routing_iters` times per batch (routing, update, routing again); at evaluation they stay
   fixed, so a row's cluster and score depend on the row alone.
2. Classification: one network per cluster whose every layer combines a shared and a
   cluster part elementwise, W = W_shared * W_k, b = b_shared + b_k (STAR's star topology,
   here `ClusterLinear`), so the shared part learns from every sample and W_k adapts it.

The centres are a buffer: saved and restored with the weights (`state_dict`). Each row runs
its own cluster's network only (`ScenarioGroups` over cluster ids: one grouped matmul per
layer, no loop over clusters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import Dropout
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioBatchNorm, ScenarioGroups


class DistributionRouter(nn.Module):
    """The distribution adaptation module: K unit-norm centres (a buffer, [K, D]) and the
    routing that assigns each row to one of them. [B, D] -> cluster ids [B]."""

    def __init__(self, clusters: int, dim: int, momentum: float, tau: float, iters: int):
        super().__init__()
        # seeded by torch's generator like every weight: a run's centres are reproducible
        self.register_buffer("centres", nn.functional.normalize(torch.randn(clusters, dim), dim=1))
        self.momentum, self.tau, self.iters = momentum, tau, iters

    def similarity(self, u: torch.Tensor) -> torch.Tensor:
        """cos(u, c_k) [B, K] of unit rows u [B, D]. The centres are renormalized here: under
        `train --nproc` the processes' centres are averaged with the other buffers before
        validation (docs/distributed.md), and a mean of unit vectors is shorter than 1."""
        return u @ nn.functional.normalize(self.centres, dim=1).t()

    def coefficients(self, u: torch.Tensor) -> torch.Tensor:
        """Distribution coefficients r [B, K] of unit rows u [B, D]."""
        return torch.softmax(self.similarity(u) / self.tau, dim=1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in the centres' dtype even under autocast: a bf16 similarity could flip a near tie
        with torch.autocast(x.device.type, enabled=False):
            return self._route(nn.functional.normalize(x.to(self.centres.dtype), dim=1))

    def _route(self, u: torch.Tensor) -> torch.Tensor:
        if self.training:  # the centres follow the training batches only, never at eval
            for _ in range(self.iters):
                pull = self.coefficients(u).t() @ u  # [K, D]: sum_i r_ik u_i
                step = nn.functional.normalize(pull, dim=1)
                moved = self.centres.lerp(step, 1.0 - self.momentum)  # beta c + (1 - beta) step
                self.centres.copy_(nn.functional.normalize(moved, dim=1))
        return self.similarity(u).argmax(dim=1)  # the largest coefficient's cluster


class ClusterLinear(nn.Module):
    """A layer of the cluster networks: cluster k uses W_shared * W_k and b_shared + b_k
    (rows grouped by cluster, one grouped matmul). Without the shared part W_k, b_k alone;
    without cluster parts (one network) W_shared, b_shared alone.

    With both, W_k starts at 1 and b_k at 0, so every cluster starts as the shared network
    (as STAR's `StarLinear`; a product of two default-initialized matrices would start with
    vanishing weights)."""

    def __init__(self, clusters: int, in_dim: int, out_dim: int, shared: bool, specific: bool):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default range

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.weight = init(in_dim, out_dim) if shared else None
        self.bias = init(out_dim) if shared else None
        self.cluster_weight = self.cluster_bias = None
        if specific:
            self.cluster_weight = (
                nn.Parameter(torch.ones(clusters, in_dim, out_dim))
                if shared
                else init(clusters, in_dim, out_dim)
            )
            self.cluster_bias = (
                nn.Parameter(torch.zeros(clusters, out_dim)) if shared else init(clusters, out_dim)
            )

    def forward(self, x: torch.Tensor, groups: ScenarioGroups | None) -> torch.Tensor:
        if self.cluster_weight is None:  # one network for every row
            return torch.addmm(self.bias, x, self.weight)
        w, b = self.cluster_weight, self.cluster_bias  # [K, in, out], [K, out]
        if self.weight is not None:
            w, b = self.weight * w, self.bias + b  # every cluster's weight, once per batch
        return groups.linear(x, w, b)  # [B, out], each row with its own cluster's weight


@dataclass
class AdaptDHMParams(ModelParams):
    # Scenario-Wise Rec's KuaiRand setting: 3 clusters, FCN [64, 64], momentum 0.9
    clusters: int = 3  # K
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # each cluster's FCN
    momentum: float = 0.9  # beta of the centre update
    temperature: float = 0.1  # tau of the routing softmax over cosine similarities
    routing_iters: int = 3  # centre updates per training batch
    batch_norm: bool = True  # after each hidden layer, each cluster with its own statistics
    dropout: float = 0.1

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[64, 64]")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"{where}.momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.temperature < math.inf:
            raise UserError(f"{where}.temperature must be positive, got {self.temperature}")
        if "cluster" in self.drop and "shared" in self.drop:
            raise UserError(
                f"{where}.drop: without the clustering process the shared FCN is the whole "
                "network; drop 'cluster' or 'shared', not both"
            )


@register(
    "adaptdhm",
    AdaptDHMParams,
    paper="AdaptDHM (Li et al., 2022)",
    switches={
        "cluster": "the clustering process: no centres, one network (the shared FCN) for every row",
        "shared": "the shared FCN: each cluster's network is its own, W = W_k, b = b_k",
    },
)
class AdaptDHM(nn.Module):
    def __init__(self, schema: Schema, p: AdaptDHMParams):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        clustered = "cluster" not in p.drop
        self.clusters = p.clusters
        self.router = (
            DistributionRouter(p.clusters, in_dim, p.momentum, p.temperature, p.routing_iters)
            if clustered
            else None
        )
        dims = [in_dim, *p.hidden, 1]
        self.layers = nn.ModuleList(
            ClusterLinear(p.clusters, a, b, shared="shared" not in p.drop, specific=clustered)
            for a, b in zip(dims[:-1], dims[1:])
        )
        K = p.clusters if clustered else 1
        self.norms = (
            nn.ModuleList(ScenarioBatchNorm(K, h) for h in p.hidden) if p.batch_norm else None
        )
        self.dropout = Dropout(p.dropout)

    def assign(self, batch: Batch) -> torch.Tensor:
        """Each row's cluster [B] (in training this also moves the centres)."""
        if self.router is None:
            raise ValueError("AdaptDHM without its clustering process has no clusters")
        return self.router(self.embedding.fields(batch).flatten(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding.fields(batch).flatten(1)  # [B, n*d]
        cluster = self.router(x) if self.router is not None else torch.zeros_like(batch.scenario)
        groups = ScenarioGroups(cluster, self.clusters) if self.router is not None else None
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            h = layer(h, groups)  # [B, h_i]
            if self.norms is not None:
                h = self.norms[i](h, cluster)
            h = self.dropout(h, relu=True)
        return self.layers[-1](h, groups).squeeze(-1)  # [B]
