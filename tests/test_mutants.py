"""The mutation check (`benchmarks/mutants.py`) cannot go stale silently: every planted bug's
snippet is found exactly once in the current tree, and the mutated file still parses (a
syntax error would be "killed" by any test without checking anything). After a refactor
moves a snippet, this fails and names the mutant to retarget."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_mutants():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "benchmarks" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MUTANTS = load_mutants().MUTANTS


def test_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.name)
def test_snippet_found_once_and_the_mutant_parses(m):
    source = (ROOT / m.file).read_text()
    assert source.count(m.original) == 1, f"{m.name}: retarget its snippet in {m.file}"
    assert m.replacement != m.original
    ast.parse(source.replace(m.original, m.replacement, 1), m.file)
    for t in m.tests:
        assert (ROOT / t).is_file(), f"{m.name}: no test file {t}"
