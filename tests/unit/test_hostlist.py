"""Hostlist expressions: Slurm 22.05 acceptance, membership without expansion, expansion."""

import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from jobns.config import hostlist as hl

# (expression, expected names) — the cases of python-building-blocks.md §4 on which
# python-hostlist and `scontrol show hostnames` (Slurm 22.05.8) agree.
VALID = [
    ("n1", ["n1"]),
    ("n[2-4,6]", ["n2", "n3", "n4", "n6"]),
    ("n[01-10]", [f"n{i:02d}" for i in range(1, 11)]),
    ("n[009-011]", ["n009", "n010", "n011"]),
    ("n[09-11]", ["n09", "n10", "n11"]),
    ("n[1-010]", [f"n{i}" for i in range(1, 11)]),
    ("rack[1-2]-n[1-3]", [f"rack{r}-n{n}" for r in (1, 2) for n in (1, 2, 3)]),
    ("node-[001-003]-gpu[0-1]", [f"node-{a:03d}-gpu{b}" for a in (1, 2, 3) for b in (0, 1)]),
    ("n[0-2]-[0-1]", [f"n{a}-{b}" for a in (0, 1, 2) for b in (0, 1)]),
    ("n[1-3],m5", ["n1", "n2", "n3", "m5"]),
    ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    ("n1,,n2", ["n1", "n2"]),
    ("  n1 ", ["n1"]),
    ("n1 n2", ["n1", "n2"]),
    ("n[05]", ["n05"]),
    ("n[1-3],n[2-5]", ["n1", "n2", "n3", "n4", "n5"]),
]

INVALID = [
    "", "   ", "n[5-3]", "n[]", "n[a-c]", "n[,1]", "n[1,,2]", "n[1-3-5]", "n[-1]",
    "n[1-]", "n[1-3", "n1-3]", "n[[1]]", "n[1-2].ib", "n[1-3]!n2", "@rack1", "n[1-4/2]",
    "n[1 - 2]", "n#1", "n;1", "nö", "n[1-2]x", "n[1-99999999999999999999]",
]


@pytest.mark.parametrize("expr,names", VALID)
def test_valid_expressions_expand_like_slurm(expr, names):
    assert hl.expand(expr) == names


@pytest.mark.parametrize("expr,names", VALID)
def test_membership_agrees_with_expansion(expr, names):
    parsed = hl.parse(expr)
    for n in names:
        assert n in parsed
    for n in ("n0", "n7", "n001", "n011x", "rack3-n1", "n", "", "m", "n1,n2", "n11"):
        if n not in names:
            assert n not in parsed


@pytest.mark.parametrize("expr", INVALID)
def test_invalid_expressions_are_rejected(expr):
    with pytest.raises(hl.HostlistError):
        hl.parse(expr)


@pytest.mark.parametrize("expr,word", [
    ("n[1-3]!n2", "exclusion"), ("@rack1", "groups"), ("n[1-4/2]", "steps"),
    ("n[1-2].ib", "after the last"), ("n[5-3]", "backwards"), ("n[]", "empty"),
])
def test_rejection_messages_say_why(expr, word):
    with pytest.raises(hl.HostlistError, match=word):
        hl.parse(expr)


def test_zero_padding_rules():
    h = hl.parse("n[01-10]")
    assert "n01" in h and "n10" in h
    assert "n1" not in h and "n001" not in h and "n010" not in h
    h = hl.parse("n[1-010]")
    assert "n1" in h and "n10" in h and "n01" not in h and "n010" not in h
    h = hl.parse("n[8-100]")
    assert "n8" in h and "n100" in h and "n08" not in h


def test_literal_after_bracket_beginning_with_digits():
    h = hl.parse("a[1-2]0[3-4]")
    assert "a103" in h and "a204" in h and "a13" not in h and "a1034" not in h


def test_huge_range_membership_is_exact():
    h = hl.parse("n[1-100000]")
    assert len(h) == 100000
    assert "n99999" in h and "n100000" in h
    assert "n100001" not in h and "n0" not in h
    big = hl.parse("n[1-100000000],gpu[000000-999999]")
    assert len(big) == 100_000_000 + 1_000_000
    assert "n100000000" in big and "n100000001" not in big
    assert "gpu000042" in big and "gpu42" not in big
    assert "rack1-n3" in hl.parse("rack[1-50000]-n[1-50000]")


def test_expansion_is_refused_beyond_the_limit_but_membership_is_not():
    with pytest.raises(hl.HostlistError, match="more than"):
        hl.expand("n[1-200000]")
    assert "n150000" in hl.parse("n[1-200000]")


def test_normalized_text_round_trips():
    h = hl.parse(" n[01-03,7]  m1 ")
    again = hl.parse(h.normalized())
    assert hl.expand(h.normalized()) == hl.expand(again.normalized())
    # each range has its own width: "7" is not padded
    assert sorted(hl.expand(h.normalized())) == sorted(["n01", "n02", "n03", "n7", "m1"])


def test_non_string_is_rejected():
    with pytest.raises(hl.HostlistError):
        hl.parse(5)  # type: ignore[arg-type]
    assert 5 not in hl.parse("n5")


_prefix = st.text(alphabet="abn-.", min_size=1, max_size=3)
_range = st.tuples(st.integers(0, 120), st.integers(0, 30), st.integers(1, 3)).map(
    lambda t: (t[0], t[0] + t[1], t[2]))


@st.composite
def _expressions(draw):
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        ranges = draw(st.lists(_range, min_size=1, max_size=3))
        items = [f"{lo:0{w}d}-{hi}" if hi != lo else f"{lo:0{w}d}" for lo, hi, w in ranges]
        body = "[" + ",".join(items) + "]"
        groups = draw(st.integers(1, 2))
        text = draw(_prefix) + body
        if groups == 2:
            text += draw(_prefix) + "[" + ",".join(items[:1]) + "]"
        parts.append(text)
    return ",".join(parts)


@settings(max_examples=200, deadline=None)
@given(_expressions(), st.text(alphabet="abn-.0123456789", max_size=8))
def test_membership_matches_python_hostlist_expansion(expr, probe):
    import hostlist as python_hostlist

    names = set(python_hostlist.expand_hostlist(expr))
    parsed = hl.parse(expr)
    for n in list(names)[:50]:
        assert n in parsed
    assert (probe in parsed) == (probe in names)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_gives_hostlist_error_or_a_hostlist(text):
    try:
        h = hl.parse(text)
    except hl.HostlistError:
        return
    assert isinstance(len(h), int)
    "n1" in h  # noqa: B015 - must not raise


SCONTROL = shutil.which("scontrol")
# Where jobns deliberately differs from Slurm 22.05 (documented in docs/config.md):
# Slurm reads "n[1-]" as n1 and "n[1-3" as "n]"; jobns rejects both.
# Slurm accepts any character in a name ("n#1", "@rack1", "nö"); jobns allows only
# [A-Za-z0-9._-]. Slurm reads "n[1 - 2]" as n01,n02; jobns rejects spaces in brackets.
DELIBERATE_DIFFERENCES = {"n[1-]", "n[1-3", "n1-3]", "@rack1", "n[1 - 2]", "n#1", "n;1",
                          "n\u00f6"}


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text("ClusterName=oracle\nSlurmctldHost=localhost\n"
                    "NodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost\n")
    return str(conf)


def _scontrol_names(expr, slurm_conf):
    proc = subprocess.run([SCONTROL, "show", "hostnames", expr], capture_output=True,
                          text=True, timeout=20, env={"SLURM_CONF": slurm_conf, "PATH": "/usr/bin:/bin"})
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Invalid hostlist" in out or "fatal" in out:
        return None
    return proc.stdout.split()


@pytest.mark.skipif(SCONTROL is None, reason="scontrol (Slurm) is not installed here")
@pytest.mark.parametrize("expr", [e for e, _ in VALID] + [e for e in INVALID if e.strip()]
                         + ["n[1-65536]", "n[1-2]x[1-2]", "n[1-3]-"])
def test_oracle_scontrol_show_hostnames(expr, slurm_conf):
    theirs = _scontrol_names(expr, slurm_conf)
    try:
        ours = hl.expand(expr)
    except hl.HostlistError:
        ours = None
    if expr in DELIBERATE_DIFFERENCES:
        # Slurm accepts these oddities; jobns rejects them on purpose (docs/config.md)
        assert theirs is not None and ours is None, (expr, theirs, ours)
        return
    # scontrol lists duplicates; jobns lists each name once
    assert ours == (list(dict.fromkeys(theirs)) if theirs is not None else None)


@pytest.mark.skipif(SCONTROL is None, reason="scontrol (Slurm) is not installed here")
def test_oracle_slurm_range_limit(slurm_conf):
    assert _scontrol_names("n[1-65537]", slurm_conf) is None
    assert hl.parse("n[1-65537]").slurm_problems() != []
    assert hl.parse("n[1-65536]").slurm_problems() == []
