"""job_container.conf (Slurm job_container/tmpfs, namespace/tmpfs) reader.

Syntax as Slurm's parse_config reads it: ``#`` starts a comment unless escaped (``\\#``);
a line ending in an odd number of backslashes continues on the next line; ``\\x`` stands
for ``x``; a value is either ``"double quoted"`` (may contain spaces) or runs up to the
next whitespace; keys are case-insensitive. A line is a ``NodeName=<hostlist> BasePath=…``
line (for the listed nodes), a ``BasePath=…`` line (for every node), or global keys.

Every applicable line overwrites the fields it sets, so the *last* applicable line wins;
values on a line beat global values; with no applicable line jobns is disabled on the
node (as Slurm 23.02.5 and later).
"""

from __future__ import annotations

import re

from jobns.config import hostlist as hl
from jobns.values import Record
from jobns.config._common import (MAX_WAIT, Findings, Setting, check_abs_path, check_dirs,
                                  check_script, is_none_path, split_dirs)

# lower-case key -> (field, Slurm spelling, type)
KEYS = {
    "autobasepath": ("auto_base_path", "AutoBasePath", "bool"),
    "basepath": ("base_path", "BasePath", "path"),
    "dirs": ("dirs", "Dirs", "dirs"),
    "shared": ("shared", "Shared", "bool"),
    "initscript": ("init_script", "InitScript", "script"),
    "clonensscript": ("clone_ns_script", "CloneNSScript", "script"),
    "clonensscript_wait": ("clone_ns_script_wait", "CloneNSScript_Wait", "wait"),
    "clonensepilog": ("clone_ns_epilog", "CloneNSEpilog", "script"),
    "clonensepilog_wait": ("clone_ns_epilog_wait", "CloneNSEpilog_Wait", "wait"),
    "entirestepinns": ("entire_step_in_ns", "EntireStepInNS", "bool"),
    "nodename": (None, "NodeName", "hostlist"),
}
KEY_NAMES = {f: spelled for f, spelled, _t in KEYS.values() if f}
TRUE_WORDS = ("yes", "up", "true", "1")
FALSE_WORDS = ("no", "down", "false", "0")

_PAIR = re.compile(r'\s*([A-Za-z0-9_.]+)\s*([-*+/]?)=\s*(?:"([^"]*)"|(\S*))(?=\s|\Z)')
_DIGITS = re.compile(r"[0-9]+\Z")
_INCLUDE = re.compile(r"\s*include\s", re.IGNORECASE)


class Line(Record):
    lineno: int
    hostlist: object | None      # HostList, or None for a line that applies to every node
    settings: dict


class ConfDoc(Record):
    globals: dict
    lines: list


def logical_lines(text: str):
    """Yield (first physical line number, logical line) as Slurm's reader forms them."""
    buf = ""
    start = None
    for n, raw in enumerate(text.split("\n"), 1):
        raw = raw.rstrip("\r")
        # comment: the first '#' preceded by an even number of backslashes
        bs = 0
        for i, c in enumerate(raw):
            if c == "#" and bs % 2 == 0:
                raw = raw[:i]
                break
            bs = bs + 1 if c == "\\" else 0
        if start is None:
            start = n
        stripped = raw.rstrip()
        trail = len(stripped) - len(stripped.rstrip("\\"))
        if trail % 2 == 1:
            buf += stripped[:-1]
            continue
        buf += raw
        yield start, _unescape(buf)
        buf = ""
        start = None
    if buf:
        yield start, _unescape(buf)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s) if "\\" in s else s


def split_pairs(line: str):
    """[(key, value, operator)] of a logical line, or raise ValueError with the rest."""
    pairs = []
    pos = 0
    while True:
        m = _PAIR.match(line, pos)
        if not m:
            break
        value = m.group(3) if m.group(3) is not None else m.group(4)
        pairs.append((m.group(1), value, m.group(2)))
        pos = m.end()
    rest = line[pos:].strip()
    if rest:
        raise ValueError(rest)
    return pairs


def parse(text: str, fnd: Findings) -> ConfDoc:
    doc = ConfDoc(globals={}, lines=[])
    global_seen: dict[str, int] = {}
    for lineno, line in logical_lines(text):
        if not line.strip():
            continue
        if _INCLUDE.match(line):
            fnd.error("Include is not supported by jobns", line=lineno, key="Include",
                      hint="copy the included lines into this file")
            continue
        try:
            pairs = split_pairs(line)
        except ValueError as exc:
            fnd.error(f"cannot parse {str(exc)[:60]!r}: expected Key=Value", line=lineno,
                      hint='values with spaces must be double-quoted: Key="a b"')
            continue
        if not pairs:
            continue
        first = pairs[0][0].lower()
        if first == "nodename":
            _node_line(pairs, lineno, fnd, doc, per_node=True)
        elif first == "basepath":
            _node_line(pairs, lineno, fnd, doc, per_node=False)
        else:
            for key, value, op in pairs:
                _global(key, value, op, lineno, fnd, doc, global_seen)
    return doc


def _node_line(pairs, lineno: int, fnd: Findings, doc: ConfDoc, per_node: bool) -> None:
    settings: dict[str, Setting] = {}
    hostlist = None
    seen: set[str] = set()
    ok = True
    for i, (key, value, op) in enumerate(pairs):
        low = key.lower()
        if low in seen:
            fnd.warn("key given twice on this line; the last value is used", line=lineno,
                     key=key, hint="remove one of them")
        seen.add(low)
        if op:
            fnd.error(f"operator {op}= is not supported", line=lineno, key=key,
                      hint=f"write {key}=value")
            ok = False
            continue
        if low == "nodename":
            if i != 0:
                fnd.error("NodeName must be the first key of its line", line=lineno, key=key)
                ok = False
                continue
            try:
                hostlist = hl.parse(value)
                for problem in hostlist.slurm_problems():
                    fnd.warn(problem, line=lineno, key=key,
                             hint="split the range if Slurm also reads this file")
            except hl.HostlistError as exc:
                fnd.error(f"{value!r} is not a valid hostlist: {exc}", line=lineno, key=key,
                          hint="write names like n1 or ranges like n[2-4,6]")
                ok = False
            continue
        spec = KEYS.get(low)
        if spec is None:
            _unknown(fnd, key, lineno)
            continue
        field, _spelled, kind = spec
        val = _value(kind, key, value, lineno, fnd)
        if val is not None:
            settings[field] = Setting(val, lineno, key)
    if "base_path" not in settings and "basepath" not in seen:
        fnd.error("a NodeName line needs a BasePath", line=lineno, key="BasePath",
                  hint="add BasePath=/path (or BasePath=none to disable these nodes)")
        ok = False
    if not ok:
        return
    if per_node and hostlist is None:
        return
    doc.lines.append(Line(lineno, hostlist if per_node else None, settings))


def _global(key, value, op, lineno, fnd: Findings, doc: ConfDoc, seen: dict) -> None:
    low = key.lower()
    spec = KEYS.get(low)
    if spec is None:
        _unknown(fnd, key, lineno)
        return
    field, spelled, kind = spec
    if op:
        fnd.error(f"operator {op}= is not supported", line=lineno, key=key,
                  hint=f"write {key}=value")
        return
    if low == "nodename":
        fnd.error("NodeName must be the first key of its line", line=lineno, key=key)
        return
    if low == "basepath":
        fnd.error("BasePath must be the first key of its line (or follow NodeName)",
                  line=lineno, key=key, hint="put global keys on their own lines")
        return
    if low in seen:
        fnd.warn(f"{spelled} is set again (first at line {seen[low]}); the last value is used",
                 line=lineno, key=key, hint="remove one of them")
    seen[low] = lineno
    if low == "initscript":
        fnd.warn("Slurm accepts InitScript only on a BasePath or NodeName line and refuses "
                 "to start with this file; jobns applies it to every line",
                 line=lineno, key=key, hint="move it onto the BasePath/NodeName lines")
    elif low in ("clonensscript", "clonensepilog"):
        fnd.warn(f"Slurm silently ignores a global {spelled}; jobns applies it to every line",
                 line=lineno, key=key, hint="put it on the BasePath/NodeName lines to behave "
                                            "the same under Slurm")
    val = _value(kind, key, value, lineno, fnd)
    if val is not None:
        doc.globals[field] = Setting(val, lineno, key)


def _unknown(fnd: Findings, key: str, lineno: int) -> None:
    import difflib

    names = [s for _f, s, _k in KEYS.values()]
    close = difflib.get_close_matches(key.lower(), list(KEYS), n=1)
    hint = (f"did you mean {KEYS[close[0]][1]}?" if close
            else "known keys: " + ", ".join(names))
    fnd.error("unknown key (Slurm refuses to start with it too)", line=lineno, key=key,
              hint=hint)


def _value(kind: str, key: str, value: str, lineno: int, fnd: Findings):
    """Converted value, or None when invalid (finding recorded) or empty."""
    if kind == "bool":
        low = value.lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        fnd.error(f"{value!r} is not a boolean", line=lineno, key=key,
                  hint="write yes or no (also true/false, up/down, 1/0)")
        return None
    if kind == "wait":
        low = value.strip().lower()
        digits = _DIGITS.match(low) is not None
        if low in ("unlimited", "infinite") or (digits and int(low) == 0):
            fnd.warn(f"{key}={value} means 'no time limit' to Slurm's namespace/tmpfs; jobns "
                     "never waits without limit and uses the default of 10 seconds",
                     line=lineno, key=key, hint="give the number of seconds to allow")
            return 0
        if digits:
            n = int(low)
            if n > MAX_WAIT:
                fnd.error(f"{n} seconds is too large", line=lineno, key=key,
                          hint=f"use at most {MAX_WAIT}")
                return None
            return n
        fnd.error(f"{value!r} is not a non-negative whole number of seconds", line=lineno,
                  key=key, hint="e.g. 10")
        return None
    if kind == "path":
        if not value:
            fnd.error("empty BasePath", line=lineno, key=key,
                      hint="write BasePath=/path, or BasePath=none to disable")
            return None
        if not is_none_path(value) and not check_abs_path(value, fnd, lineno, key, "BasePath"):
            return None
        return value
    if kind == "script":
        if not value:
            fnd.warn("empty value is ignored", line=lineno, key=key)
            return None
        return value if check_script(value, fnd, lineno, key) else None
    if kind == "dirs":
        if not value:
            fnd.warn("empty Dirs is ignored; the default /tmp,/dev/shm applies", line=lineno,
                     key=key)
            return None
        return check_dirs(split_dirs(value), fnd, lineno, key)
    raise AssertionError(kind)


def select(doc: ConfDoc, node: str) -> tuple[dict, str, list[int]]:
    """Merged settings for `node`, the origin text, and every applicable line number."""
    settings = dict(doc.globals)
    applied = []
    for ln in doc.lines:
        if ln.hostlist is None or node in ln.hostlist:
            settings.update(ln.settings)
            applied.append(ln.lineno)
    if not applied:
        return {}, f"no line applies to node {node}", []
    return settings, f"line {applied[-1]}", applied


def candidates(doc: ConfDoc):
    """(settings, origin) for each line as if it were the only applicable one."""
    for ln in doc.lines:
        merged = dict(doc.globals)
        merged.update(ln.settings)
        yield merged, f"line {ln.lineno}"
