"""Rules the test suite itself keeps: tests assert behaviour, not speed.

A test that bounds how long something took fails on a busy machine (CI shares its cores);
speed is measured in bench/. Where a test must show that a timeout fired at all, its upper
bound leaves ample room (at least MIN_BOUND seconds).
"""

from __future__ import annotations

import ast
import os

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_BOUND = 10.0
_TIME_WORDS = ("elapsed", "took", "monotonic", "perf_counter", "cold", "warm", "duration")


def _test_files():
    for top, _dirs, files in os.walk(TESTS):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(top, name)


def _constants(tree: ast.Module) -> dict:
    """Module-level `NAME = <number>` assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, (int, float)):
                out[node.targets[0].id] = value
    return out


class _Unknown(ast.NodeTransformer):
    """Replace what cannot be evaluated statically (attributes, calls) by 0: a lower
    estimate of a bound, so a tight bound is never missed."""

    def __init__(self, names):
        self.names = names

    def visit_Attribute(self, node):
        return ast.copy_location(ast.Constant(0), node)

    def visit_Call(self, node):
        return ast.copy_location(ast.Constant(0), node)

    def visit_Name(self, node):
        return ast.copy_location(ast.Constant(self.names.get(node.id, 0)), node)


def _bound(expr: ast.expr, names: dict) -> float | None:
    tree = ast.Expression(_Unknown(names).visit(ast.parse(ast.unparse(expr), mode="eval").body))
    try:
        value = eval(compile(ast.fix_missing_locations(tree), "<bound>", "eval"), {})
    except Exception:
        return None
    return value if isinstance(value, (int, float)) else None


def _timed_bounds(path: str):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = _constants(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in ast.walk(node.test):
            if not isinstance(cmp, ast.Compare):
                continue
            left = cmp.left
            for op, right in zip(cmp.ops, cmp.comparators):
                if isinstance(op, (ast.Lt, ast.LtE)) and \
                        any(w in ast.unparse(left) for w in _TIME_WORDS):
                    bound = _bound(right, names)
                    if bound is not None and bound < MIN_BOUND:
                        yield f"{os.path.relpath(path, TESTS)}:{node.lineno}: " \
                              f"{ast.unparse(cmp)}"
                left = right


def test_no_test_bounds_a_run_time_tightly():
    found = [hit for path in _test_files() for hit in _timed_bounds(path)]
    assert found == [], "timing bounds belong in bench/:\n" + "\n".join(found)


@pytest.mark.parametrize("name", ["unit/test_config_api.py", "unit/test_hostlist.py"])
def test_speed_is_measured_in_bench_not_in_tests(name):
    with open(os.path.join(TESTS, name), encoding="utf-8") as f:
        assert "perf_counter" not in f.read()
