"""Model registry: name -> model class, hyperparameter dataclass and ablation switches.

Every module in `msctr/models/` is imported on first use, and each model file registers its
model with `@register(...)`. A recipe's `params` are parsed into the model's dataclass once,
when the recipe is read (`parse_params`: unknown key = one-line error, values checked by
`ModelParams.validate`, `drop` against the declared switches), and checked against the data's
schema once, before the first model is built (`check_model`: `ModelParams.check_schema`).
Constructors trust what they are given. Adding a model: docs/models/README.md.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from msctr.config import from_dict
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import at_least_fp32
from msctr.resources import need_memory


class ModelOutput(NamedTuple):
    logit: torch.Tensor  # [B]
    aux_loss: torch.Tensor  # scalar, added to BCE by the training loop


@dataclass
class ModelParams:
    """Keys every model accepts. Each model extends this with its own."""

    embed_dim: int = 16
    drop: list[str] = field(default_factory=list)  # ablation switches turned off

    def validate(self, where: str) -> None:
        """The rules every model's params share, then the model's own `check`.

        Every integer (or list of integers) param is a size or a count, so at least 1; every
        param named `*dropout` is a rate in [0, 1). Run once, by `config.from_dict` as the
        params are parsed (`parse_params`).
        """
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("dropout") and isinstance(v, float) and not 0.0 <= v < 1.0:
                raise UserError(f"{where}.{f.name} must be in [0, 1), got {v}")
            if _is_int(v) and v < 1:
                raise UserError(f"{where}.{f.name} must be at least 1, got {v}")
            if isinstance(v, list) and any(_is_int(x) and x < 1 for x in v):
                raise UserError(f"{where}.{f.name}: sizes must be positive integers, got {v}")
        self.check(where)

    def check(self, where: str) -> None:
        """A model's own rules beyond the shared ones (e.g. two values that must agree)."""

    def check_schema(self, schema: Schema, where: str) -> None:
        """A model's rules that need the prepared data (a named field or sequence must exist,
        enough fields for a part): run once per dataset by `check_model`, before any model is
        built, so the constructor trusts its params."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def need_layers(where: str, key: str, layers: list[int], example: str) -> None:
    """`key` must list at least one layer size."""
    if not layers:
        raise UserError(f"{where}.{key} needs at least one layer size, e.g. {example}")


def need_fields(
    available: list[str], names: list[str], key: str, kind: str = "field", once: bool = False
) -> None:
    """Every name in `names` (the value of recipe key `key`) is one of `available` (`once`:
    and none is listed twice)."""
    for i, n in enumerate(names):
        if n not in available:
            raise UserError(
                f"{key}: '{n}' is not a {kind} of this dataset; choose from: {', '.join(available)}"
            )
        if once and n in names[:i]:
            raise UserError(f"{key}: field '{n}' is listed twice; list it once")


@dataclass(frozen=True)
class ModelFigure:
    """A figure a model adds to its run's report (`msctr eval`), drawn from the first seed's
    `model_report` (what the model's `report()` returned, kept in run.json).

    `draw(plt, model_report, scenario_names, label)` returns a matplotlib figure, or None when
    the report holds nothing to draw (a switch turned the part off); `msctr.evaluate.figures`
    lays it out and writes it as `<stem>_<model folder>.png`, linked from report.md."""

    stem: str
    draw: Callable[[Any, dict, list[str], str], Any]


@dataclass
class ModelSpec:
    name: str
    cls: type[nn.Module]
    params: type[ModelParams]
    switches: dict[str, str]  # switch name -> what dropping it removes
    paper: str
    needs_sequences: bool = False
    figure: ModelFigure | None = None


MODELS: dict[str, ModelSpec] = {}


def register(
    name: str,
    params: type[ModelParams],
    paper: str,
    switches: dict[str, str] | None = None,
    needs_sequences: bool = False,
    figure: ModelFigure | None = None,
):
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = ModelSpec(name, cls, params, switches or {}, paper, needs_sequences, figure)
        return cls

    return wrap


@functools.cache
def _load_all() -> None:
    """Import every module of `msctr.models`: a model file registers itself on import, so a
    new model is one new file and no list to edit. Lazy, so `msctr --help` stays fast."""
    package = importlib.import_module("msctr.models")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"msctr.models.{info.name}")


def get_spec(name: str) -> ModelSpec:
    _load_all()
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; available models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def available() -> list[str]:
    _load_all()
    return sorted(MODELS)


def parse_params(name: str, params: dict | None, where: str = "model.params") -> ModelParams:
    spec = get_spec(name)
    p = from_dict(spec.params, params, where)
    check_switches(spec, p.drop)
    return p


def check_switches(spec: ModelSpec, drop: list[str]) -> None:
    for s in drop:
        if s not in spec.switches:
            listed = ", ".join(spec.switches) if spec.switches else "none"
            raise UserError(
                f"model '{spec.name}' has no ablation switch '{s}'; its switches are: {listed}"
            )


# fp32 copies of every parameter that training holds: weights, gradients, Adam's 2 moments
TRAIN_COPIES = 4


def check_model(name: str, schema: Schema, p: ModelParams, where: str = "model.params") -> None:
    """The checks of parsed params that need the data's schema; builds nothing."""
    spec = get_spec(name)
    if spec.needs_sequences and not schema.sequences:
        raise UserError(
            f"model '{name}' needs behavior sequences, but dataset '{schema.source}' has none; "
            "prepare the data with sequences (e.g. `msctr prepare synthetic`) or pick another model"
        )
    p.check_schema(schema, where)


def check_memory(
    name: str,
    schema: Schema,
    p: ModelParams,
    copies: int = 1,
    device: torch.device | str = "cpu",
) -> None:
    """Refuse a model whose parameters (`copies` fp32 copies of them) cannot fit in the
    memory `device` has free, before any of it is allocated: the model is built on PyTorch's
    meta device, which records shapes and allocates nothing. `p` is parsed and checked
    (`check_model`) already."""
    with torch.device("meta"):
        shape = get_spec(name).cls(schema, p)
    count = sum(t.numel() for t in shape.parameters())
    need_memory(
        count * 4 * copies,
        f"model '{name}' ({count:,} parameters{', trained with Adam' if copies > 1 else ''})",
        "lower embed_dim or the layer sizes",
        device,
    )


def build(name: str, schema: Schema, params: dict | ModelParams | None = None) -> nn.Module:
    """Model `name` on `schema`. Params that come as a dataclass are trusted: a recipe's are
    parsed once when it is read (`ModelEntry.model_params`) and checked against the data
    before training starts (`check_model`). A dict (tests, benchmarks) is parsed and checked
    here."""
    if isinstance(params, ModelParams):
        p = params
    else:
        p = parse_params(name, params)
        check_model(name, schema, p)
    check_memory(name, schema, p)  # an absurd size: one line, not an allocator's error
    return get_spec(name).cls(schema, p)


def split_output(out: torch.Tensor | ModelOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, ModelOutput):
        return out.logit, out.aux_loss
    return out, None


def training_loss(
    out: torch.Tensor | ModelOutput, label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective of a model output: (BCE of the logit in fp32, that BCE plus the
    model's auxiliary loss, if it has one). The second is what training minimizes."""
    logit, aux = split_output(out)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(at_least_fp32(logit), label)
    return loss, loss if aux is None else loss + aux
