"""Helpers shared by the config reader tests."""

from __future__ import annotations

import textwrap

from jobns.config import check, load


def write(tmp_path, text, name="namespace.yaml"):
    """Write dedented `text` to tmp_path/name and return its path."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def ld(path, node="n1", **kw):
    """load() without the cache or the script checks, with a fixed hostname for %h."""
    kw.setdefault("use_cache", False)
    kw.setdefault("check_scripts", False)
    kw.setdefault("hostname", "host1")
    return load(path, node, **kw)


def findings(path, node=None):
    return [str(e) for e in check(path, node)]


def one_finding(path, *words, node=None):
    """The first finding containing every word (the test fails if there is none)."""
    found = [f for f in findings(path, node) if all(w in f for w in words)]
    assert found, f"no finding with {words}: {findings(path, node)}"
    return found[0]
