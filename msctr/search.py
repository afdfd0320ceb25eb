"""A recipe's search space (`search:`, docs/tune.md): each dotted key of a model entry
(`params.dropout`, `train.lr`) mapped to the values `msctr tune` may try.

    search:
      params.dropout: {choice: [0.0, 0.1, 0.2]}        categorical
      params.embed_dim: {int: [8, 32], step: 8}        integers (step optional; log: true)
      train.lr: {float: [1.0e-4, 1.0e-2], log: true}   reals (log or step optional)
      params.hidden: {layers: {depth: [1, 5], width: [16, 32, 64, 128]}}
                                                       d layers of width w: [w] * d

The shape of every spec is checked here when the recipe is read (train checks it too, so a
broken `search:` never waits for a tune to be found); whether a key exists for a model, and
its values are in range, is the recipe's own validation, run by `msctr.tune` on the trial
recipes it builds. Optuna is not imported here: it is an optional extra.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from msctr.errors import UserError

# the train keys a trial may vary: each changes how one run trains, none what is measured
# (seeds, eval_rows, early_stopping.metric, loader) or where (device)
TRAIN_KEYS = ("lr", "lr_decay", "weight_decay", "batch_size", "epochs", "early_stopping.patience")
KINDS = ("choice", "int", "float", "layers")
_MODIFIERS = {"choice": (), "int": ("step", "log"), "float": ("step", "log"), "layers": ()}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


@dataclass(frozen=True)
class Spec:
    """One searched key and the values it may take."""

    key: str  # relative to the model entry: params.dropout, train.lr
    kind: str  # choice | int | float | layers
    choices: tuple = ()  # choice
    low: float = 0  # int, float; layers: the depth range
    high: float = 0
    step: float | None = None
    log: bool = False
    widths: tuple[int, ...] = ()  # layers

    def names(self) -> list[str]:
        """The Optuna parameter(s) behind this key: a layer list is a depth and a width."""
        return [f"{self.key}.depth", f"{self.key}.width"] if self.kind == "layers" else [self.key]

    def suggest(self, trial: Any) -> Any:
        """The trial's value of this key (Optuna's `trial.suggest_*`), as the recipe takes it."""
        if self.kind == "layers":
            depth = trial.suggest_int(f"{self.key}.depth", int(self.low), int(self.high))
            return [trial.suggest_categorical(f"{self.key}.width", list(self.widths))] * depth
        if self.kind == "choice":
            return self.value({self.key: trial.suggest_categorical(self.key, self._encoded())})
        if self.kind == "int":
            low, high, step = int(self.low), int(self.high), int(self.step or 1)
            return trial.suggest_int(self.key, low, high, step=step, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def _encoded(self) -> list:
        # Optuna's categorical values are scalars; a list choice ([64, 32]) is stored as JSON
        if all(_scalar(c) for c in self.choices):
            return list(self.choices)
        return [json.dumps(c) for c in self.choices]

    def value(self, params: dict[str, Any]) -> Any:
        """This key's recipe value from a trial's Optuna params."""
        if self.kind == "layers":
            return [params[f"{self.key}.width"]] * params[f"{self.key}.depth"]
        raw = params[self.key]
        if self.kind == "choice" and not all(_scalar(c) for c in self.choices):
            return json.loads(raw)
        return raw

    def grid(self, where: str) -> dict[str, list]:
        """The Optuna grid of this key (`--sampler grid`): every value it may take."""
        if self.kind == "choice":
            return {self.key: self._encoded()}
        if self.kind == "layers":
            depths = list(range(int(self.low), int(self.high) + 1))
            return {f"{self.key}.depth": depths, f"{self.key}.width": list(self.widths)}
        if self.kind == "int" and self.step is not None and not self.log:
            return {self.key: list(range(int(self.low), int(self.high) + 1, int(self.step)))}
        raise UserError(
            f"{where}, {self.key}: --sampler grid tries every value, and {{{self.kind}: "
            f"[{self.low}, {self.high}]}} has no finite list of them; give it as {{choice: "
            "[...]} or {int: [low, high], step: k}, or use --sampler tpe"
        )

    def probes(self) -> list[Any]:
        """Values checked against the recipe before any trial: every choice, both ends of a
        range, the shallowest and deepest layer lists at the smallest and largest width."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "layers":
            w = sorted(self.widths)
            return [[x] * int(d) for d in (self.low, self.high) for x in (w[0], w[-1])]
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def parse_space(raw: dict, where: str) -> dict[str, Spec]:
    """A `search:` mapping as Specs; a malformed spec is one line naming the key and the fix."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of keys to specs, e.g. {{params.dropout: ...}}")
    return {str(key): parse_spec(str(key), spec, f"{where}.{key}") for key, spec in raw.items()}


def parse_spec(key: str, spec: Any, where: str) -> Spec:
    train = key.removeprefix("train.")
    if not (key.startswith("params.") and len(key) > len("params.")) and (
        not key.startswith("train.") or train not in TRAIN_KEYS
    ):
        raise UserError(
            f"{where}: a search key is a model param (params.NAME) or one of the train keys "
            f"{', '.join('train.' + k for k in TRAIN_KEYS)}"
        )
    example = "e.g. {choice: [0.0, 0.1]}, {int: [1, 4]}, {float: [1.0e-4, 1.0e-2], log: true}"
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a mapping such as {example}; got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        unknown = [k for k in spec if k not in KINDS and k not in ("step", "log")]
        what = f"unknown spec kind {unknown[0]!r}" if unknown else "no spec kind"
        if len(kinds) > 1:
            what = f"{len(kinds)} spec kinds ({', '.join(kinds)})"
        raise UserError(f"{where}: {what}; give one of {', '.join(KINDS)}, {example}")
    kind = kinds[0]
    extra = [k for k in spec if k != kind and k not in _MODIFIERS[kind]]
    if extra:
        allowed = ", ".join(_MODIFIERS[kind]) or "nothing"
        raise UserError(f"{where}: {kind} takes {allowed} beside it, not {extra[0]!r}")
    body = spec[kind]
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise UserError(f"{where}: choice needs a non-empty list of values, got {body!r}")
        twice = [c for i, c in enumerate(body) if c in body[:i]]
        if twice:
            raise UserError(f"{where}: choice lists {twice[0]!r} more than once; list each once")
        return Spec(key, kind, choices=tuple(body))
    if kind == "layers":
        return _layers(key, body, where)
    ok = _integer if kind == "int" else _number
    if not isinstance(body, list) or len(body) != 2 or not all(ok(v) for v in body):
        name = "integers" if kind == "int" else "finite numbers"
        raise UserError(f"{where}: {kind} needs [low, high], two {name}; got {body!r}")
    low, high = body
    if low > high:
        raise UserError(f"{where}: low {low} is above high {high}; give [low, high]")
    step, log = spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}.log must be true or false, got {log!r}")
    if step is not None and (not ok(step) or step <= 0):
        raise UserError(f"{where}.step must be a positive {kind}, got {step!r}")
    if step is not None and log:
        raise UserError(f"{where}: give step or log: true, not both (a log scale has no step)")
    if log and low <= 0:
        raise UserError(f"{where}: log: true needs low > 0, got {low}")
    return Spec(key, kind, low=low, high=high, step=step, log=log)


def _layers(key: str, body: Any, where: str) -> Spec:
    example = "{layers: {depth: [1, 5], width: [16, 32, 64, 128]}}"
    if not isinstance(body, dict) or set(body) != {"depth", "width"}:
        raise UserError(f"{where}: layers needs depth and width, e.g. {example}; got {body!r}")
    depth, width = body["depth"], body["width"]
    if not isinstance(depth, list) or len(depth) != 2 or not all(_integer(d) for d in depth):
        raise UserError(f"{where}.depth must be [low, high], two integers; got {depth!r}")
    if depth[0] < 1 or depth[0] > depth[1]:
        raise UserError(f"{where}.depth [{depth[0]}, {depth[1]}] needs 1 <= low <= high")
    if not isinstance(width, list) or not width or not all(_integer(w) and w >= 1 for w in width):
        raise UserError(
            f"{where}.width must be a non-empty list of positive integers, got {width!r}"
        )
    if len(set(width)) != len(width):
        raise UserError(f"{where}.width lists a width more than once; list each once")
    return Spec(key, "layers", low=depth[0], high=depth[1], widths=tuple(width))


def model_space(shared: dict, own: dict) -> dict:
    """A model's search: the recipe's shared `search:` with the model's own on top."""
    return {**shared, **own}


def grid_size(space: dict[str, Spec]) -> int:
    return math.prod(len(v) for s in space.values() for v in s.grid("search").values())
