"""Slurm hostlist expressions: validation, membership without expansion, expansion.

The accepted syntax is what Slurm 22.05's ``hostlist_create`` accepts for ordinary
(one-dimensional) clusters:

- a list of names separated by commas or whitespace; empty items are skipped
  (``n1,,n2`` is ``n1`` and ``n2``);
- a name may contain bracket groups, each a comma-separated list of decimal numbers
  or ``lo-hi`` ranges: ``n[2-4,6]``, ``rack[1-2]-n[1-3]``;
- a range's zero padding is the width of its low end: ``n[01-10]`` gives ``n01`` …
  ``n10``, ``n[1-010]`` gives ``n1`` … ``n10``;
- nothing may follow the last ``]`` of a name (``n[1-2].ib`` is rejected, as Slurm
  22.05 rejects it).

Rejected with a message naming the problem: ``lo > hi``, empty groups or empty range
items (``n[]``, ``n[,1]``, ``n[1,,2]``), ``n[1-]`` and ``n[-1]``, ``n[1-3-5]``,
unbalanced or nested brackets, and any character outside ``[A-Za-z0-9._-]`` besides the
brackets and separators. In particular ``!`` (exclusion), ``@`` (group) and ``/``
(step) are extensions of other tools that Slurm does not have.

Membership (``name in parse(expr)``) is decided arithmetically from the ranges, so
``n[1-100000000]`` costs the same as ``n[1-3]``. Expansion is delegated to
python-hostlist, imported only when something must actually be listed.
"""

from __future__ import annotations

import re
SLURM_MAX_RANGE = 65536  # Slurm refuses one range of more names ("Too many hosts in range")
MAX_DIGITS = 64          # longest digit run read as a range bound
MAX_VALUE = 2**64 - 1    # Slurm reads bounds as unsigned long
EXPAND_LIMIT = 100_000   # python-hostlist's own cap on the size of an expansion

_ALLOWED = re.compile(r"[A-Za-z0-9._\-\[\],\s]*\Z")
_SPECIAL = {
    "!": "'!' (exclusion) is a ClusterShell/python-hostlist extension that Slurm does not have",
    "@": "'@' (node groups) is a ClusterShell extension that Slurm does not have",
    "/": "'/' (range steps) is a ClusterShell extension that Slurm does not have",
}
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")


class HostlistError(ValueError):
    """An expression Slurm would not accept; the message says which part and why."""


class _Range(tuple):
    """(lo, hi, width): the numbers lo..hi, zero-padded to width digits."""

    __slots__ = ()

    lo = property(lambda self: self[0])
    hi = property(lambda self: self[1])
    width = property(lambda self: self[2])

    def accepts(self, digits: str) -> bool:
        n = int(digits)
        return self[0] <= n <= self[1] and digits == f"{n:0{self[2]}d}"

    @property
    def size(self) -> int:
        return self[1] - self[0] + 1


class _Pattern:
    """One name of the list: literals[0] group[0] literals[1] group[1] … literals[-1]."""

    __slots__ = ("literals", "groups")

    def __init__(self, literals: tuple[str, ...], groups: tuple[tuple[_Range, ...], ...]):
        self.literals = literals
        self.groups = groups

    def matches(self, name: str) -> bool:
        if not self.groups:
            return name == self.literals[0]
        if not name.startswith(self.literals[0]):
            return False
        return self._match_from(name, len(self.literals[0]), 0)

    def _match_from(self, name: str, pos: int, gi: int) -> bool:
        # Digits of group gi start at pos; try every length of the digit run, because a
        # following literal may itself begin with digits.
        end = pos
        n = len(name)
        while end < n and "0" <= name[end] <= "9":
            end += 1
        ranges = self.groups[gi]
        lit = self.literals[gi + 1]
        last = gi + 1 == len(self.groups)
        for stop in range(end, pos, -1):
            digits = name[pos:stop]
            if len(digits) > MAX_DIGITS:
                continue
            if not any(r.accepts(digits) for r in ranges):
                continue
            if last:
                if name[stop:] == lit:
                    return True
            elif name.startswith(lit, stop) and self._match_from(name, stop + len(lit), gi + 1):
                return True
        return False

    @property
    def size(self) -> int:
        total = 1
        for ranges in self.groups:
            total *= sum(r.size for r in ranges)
        return total

    def text(self) -> str:
        out = [self.literals[0]]
        for ranges, lit in zip(self.groups, self.literals[1:]):
            items = []
            for r in ranges:
                lo = f"{r.lo:0{r.width}d}"
                items.append(lo if r.lo == r.hi and len(lo) == r.width else f"{lo}-{r.hi}")
            out.append("[" + ",".join(items) + "]" + lit)
        return "".join(out)


class HostList:
    """A parsed hostlist expression. ``name in hl`` never expands ranges."""

    __slots__ = ("expression", "_names", "_patterns")

    def __init__(self, expression: str, patterns: list[_Pattern]):
        self.expression = expression
        self._names = frozenset(p.literals[0] for p in patterns if not p.groups)
        self._patterns = tuple(p for p in patterns if p.groups)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._names:
            return True
        return any(p.matches(name) for p in self._patterns)

    def __len__(self) -> int:
        """Number of names, counting duplicates (``n[1-3],n2`` has 4)."""
        return len(self._names) + sum(p.size for p in self._patterns)

    def slurm_problems(self) -> list[str]:
        """What Slurm would refuse although jobns accepts it (ranges over 65536 names)."""
        out = []
        for p in self._patterns:
            for ranges in p.groups:
                for r in ranges:
                    if r.size > SLURM_MAX_RANGE:
                        out.append(f"range {r.lo}-{r.hi} has {r.size} names; Slurm refuses "
                                   f"ranges of more than {SLURM_MAX_RANGE} (jobns accepts it)")
        return out

    def normalized(self) -> str:
        """The expression with separators as single commas and no whitespace."""
        return ",".join(sorted(self._names) + [p.text() for p in self._patterns])

    def __repr__(self) -> str:
        return f"HostList({self.expression!r})"


def parse(expression: str) -> HostList:
    """Parse and validate `expression`; raise HostlistError if Slurm would refuse it."""
    if not isinstance(expression, str):
        raise HostlistError(f"expected a string, got {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise HostlistError("empty hostlist")
    if not _ALLOWED.match(text):
        for ch, why in _SPECIAL.items():
            if ch in text:
                raise HostlistError(why)
        bad = next(c for c in text if not _ALLOWED.match(c))
        raise HostlistError(f"character {bad!r} is not allowed in a node name")
    patterns = [_parse_name(tok) for tok in _split(text)]
    if not patterns:
        raise HostlistError("hostlist has no names")
    return HostList(text, patterns)


def matches(expression: str, name: str) -> bool:
    """True if node `name` is in `expression` (which must be valid)."""
    return name in parse(expression)


def expand(expression: str, limit: int = EXPAND_LIMIT) -> list[str]:
    """All names of a valid expression, in Slurm's order, duplicates removed.

    Raises HostlistError when the expression is invalid or has more than `limit` names.
    """
    hl = parse(expression)
    if len(hl) > limit:
        raise HostlistError(f"{expression!r} has {len(hl)} names, more than the {limit} "
                            "that may be listed (membership tests have no such limit)")
    import hostlist as _python_hostlist  # python-hostlist; only needed to list names

    names: list[str] = []
    for tok in _split(expression.strip()):
        names.extend(_python_hostlist.expand_hostlist(tok))
    seen: set[str] = set()
    out = []
    for n in names:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


_BALANCED = re.compile(r"[^\[\]]*(?:\[[^\[\]\s]*\][^\[\]]*)*\Z")
_ITEM = re.compile(r"(?:[^,\s\[]|\[[^\]]*\])+")
_GROUP = re.compile(r"\[([^\]]*)\]")


def _split(text: str) -> list[str]:
    """Split at commas and whitespace outside brackets; drop empty items."""
    if _BALANCED.match(text):
        return _ITEM.findall(text)
    return _split_slow(text)  # to say precisely what is wrong


def _split_slow(text: str) -> list[str]:
    items: list[str] = []
    depth = 0
    start = 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"nested '[' at offset {i} of {text!r}")
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"']' without '[' at offset {i} of {text!r}")
        elif depth == 0 and (c == "," or c.isspace()):
            if i > start:
                items.append(text[start:i])
            start = i + 1
        elif depth == 1 and c.isspace():
            raise HostlistError(f"whitespace inside brackets in {text!r}")
    if depth:
        raise HostlistError(f"'[' without ']' in {text!r}")
    if start < len(text):
        items.append(text[start:])
    return items


def _parse_name(tok: str) -> _Pattern:
    if "[" not in tok:
        if "]" in tok:
            raise HostlistError(f"']' without '[' in {tok!r}")
        return _Pattern((tok,), ())
    parts = _GROUP.split(tok)      # literal, body, literal, body, …, literal
    literals = tuple(parts[0::2])
    groups = tuple(_parse_group(tok, body) for body in parts[1::2])
    if literals[-1]:
        raise HostlistError(
            f"{tok!r}: text {literals[-1]!r} after the last ']' is not accepted by Slurm 22.05 "
            "(write the suffix inside the name before the brackets, or list the names)")
    return _Pattern(literals, groups)


def _parse_group(tok: str, body: str) -> tuple[_Range, ...]:
    if not body:
        raise HostlistError(f"{tok!r}: empty brackets")
    ranges = []
    for item in body.split(","):
        m = _RANGE.match(item)
        if not m:
            if not item:
                raise HostlistError(f"{tok!r}: empty item in [{body}]")
            raise HostlistError(f"{tok!r}: {item!r} is not a number or a lo-hi range")
        lo_s, hi_s = m.group(1), m.group(2)
        if len(lo_s) > MAX_DIGITS or (hi_s and len(hi_s) > MAX_DIGITS):
            raise HostlistError(f"{tok!r}: number in {item!r} has more than {MAX_DIGITS} digits")
        lo = int(lo_s)
        hi = int(hi_s) if hi_s is not None else lo
        if hi > MAX_VALUE:
            raise HostlistError(f"{tok!r}: {item!r} is larger than Slurm can read")
        if hi < lo:
            raise HostlistError(f"{tok!r}: range {item!r} runs backwards")
        ranges.append(_Range((lo, hi, len(lo_s))))
    return tuple(ranges)
