"""Typed dataclasses from plain dicts (YAML), with one-line errors for bad keys and types;
the YAML reader every msctr YAML goes through."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from msctr.errors import UserError

T = TypeVar("T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: YAML itself forbids it,
    but PyYAML keeps the last value, so a recipe with two `train:` blocks would silently
    lose the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor below says so
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' is given twice (first at line {first.start_mark.line + 1}); "
                    "keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load` that refuses duplicate keys (a yaml.YAMLError, as a syntax error is)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file the user wrote, parsed; not UTF-8 or not valid YAML (a duplicate key
    included) is a one-line UserError naming `what` and the line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(
            f"{what} is not UTF-8 text (byte {e.object[e.start]:#x} at line {line}); "
            "save it as UTF-8"
        ) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        # list items spelled as `--set` names them: train.seeds.0
        items = [_coerce(v, inner, f"{where}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        if len(args) == 2:  # dict[str, list[int]]: every value checked as its type says
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise UserError(f"{where} must be a number, got {value!r}")
        # one rule for every float key (rates, weights, temperatures, epsilons): .nan or
        # .inf is never a setting, and would pass every `x > 0` check after it
        if not math.isfinite(number):
            raise UserError(f"{where} must be a finite number, got {number}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where} must be a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict | None, where: str) -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types are UserErrors."""
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            raise UserError(
                f"unknown key '{where}.{key}': {_suggest(str(key), valid)}"
                f"valid keys are {', '.join(valid)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise UserError(f"{where}: {e}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str, what: str) -> Any:
    """A value given on the command line (`--set`, `--vary`): a YAML scalar or list (3, 1e-3,
    true, [0,1,2], hello), and text that reads as a number is that number (YAML 1.1 reads
    1e-3 as text). Not valid YAML: a one-line UserError naming `what`."""
    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        raise UserError(
            f"{what}: value {text!r} is not valid YAML; quote text that holds ': ' or "
            "starts with '[' or '{'"
        ) from None
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return value
