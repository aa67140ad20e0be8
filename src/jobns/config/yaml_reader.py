"""namespace.yaml (Slurm namespace/linux) reader.

The document is composed (not constructed) with PyYAML's C loader, so every value keeps
its line and its YAML 1.1 resolution (``yes`` → bool, ``010`` → int) can be inspected
and reported instead of silently accepted. Node selection: the *first* ``node_confs``
entry whose ``nodes`` contains the node name wins; its options are merged over
``defaults`` (see docs/config.md, "Merge rules").
"""

from __future__ import annotations

import posixpath
import re

from jobns.config import hostlist as hl
from jobns.values import Record
from jobns.config._common import (MAX_WAIT, Findings, LocatedDir, Setting, check_abs_path,
                                  check_dir_path, check_dirs, check_script, is_none_path,
                                  parse_dir_options, parse_flags, split_dirs)
from jobns.config.model import SHM_DIR, DirConf

T_STR = "tag:yaml.org,2002:str"
T_BOOL = "tag:yaml.org,2002:bool"
T_INT = "tag:yaml.org,2002:int"
T_FLOAT = "tag:yaml.org,2002:float"
T_NULL = "tag:yaml.org,2002:null"
T_MERGE = "tag:yaml.org,2002:merge"

BOOL_KEYS = ("auto_base_path", "shared", "disable_bpf_token")
WAIT_KEYS = ("clone_ns_script_wait", "clone_ns_epilog_wait")
SCRIPT_KEYS = ("clone_ns_script", "clone_ns_epilog", "init_script", "user_ns_script")
OPTION_KEYS = ("auto_base_path", "base_path", "clone_ns_flags", "clone_ns_script",
               "clone_ns_script_wait", "clone_ns_epilog", "clone_ns_epilog_wait", "dirs",
               "dir_confs", "disable_bpf_token", "init_script", "shared", "user_ns_script")
TOP_KEYS = ("defaults", "node_confs")
DIR_KEYS = ("path", "base_path", "options", "tmpfs")
ENTRY_KEYS = ("nodes", "options")
KEY_NAMES = {k: k for k in OPTION_KEYS}

_DECIMAL = re.compile(r"[0-9]+\Z")
_INVALID = object()


class Entry(Record):
    index: int
    line: int
    hostlists: list
    options: dict


class YamlDoc(Record):
    defaults: dict | None
    defaults_line: int | None
    entries: list
    top_bpf: Setting | None
    has_node_confs: bool


_PLAIN = "?plain"
# Plain scalars that YAML 1.1 (PyYAML's resolver) reads as something other than a string:
# these words, and values starting with a digit or one of "+-.<=~" (numbers, timestamps,
# .inf/.nan, the merge and value keys, null, and "!&*"). Everything else is a string.
_WORDS = {w: T_BOOL for w in (
    "yes Yes YES no No NO true True TRUE false False FALSE on On ON off Off OFF").split()}
_WORDS.update({"null": T_NULL, "Null": T_NULL, "NULL": T_NULL})
_MAYBE_NOT_STR = frozenset("0123456789+-.<=~!&*")
_loader_class = None
_resolver = None
yaml = None  # the PyYAML module, imported by _loader() on first use


def _loader(text: str):
    """A C loader that leaves plain scalars unresolved; `_t` resolves them on demand."""
    global _loader_class, _resolver, yaml
    if _loader_class is None:
        import yaml as _yaml

        yaml = _yaml

        class Loader(yaml.CSafeLoader):
            def resolve(self, kind, value, implicit):
                if kind is yaml.ScalarNode:
                    return _PLAIN if implicit[0] else T_STR
                return super().resolve(kind, value, implicit)

        _loader_class = Loader
        _resolver = yaml.resolver.Resolver()
    return _loader_class(text)


def _t(node) -> str:
    """The node's tag, resolving a plain scalar the way YAML 1.1 (PyYAML) does."""
    tag = node.tag
    if tag == _PLAIN:
        value = node.value
        if value and value[0] not in _MAYBE_NOT_STR:
            tag = _WORDS.get(value, T_STR)
        else:
            tag = _resolver.resolve(yaml.ScalarNode, value, (True, False))
        node.tag = tag
    return tag


def _line(node) -> int:
    return node.start_mark.line + 1


def _kind(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {T_BOOL: "a boolean", T_INT: "an integer", T_FLOAT: "a number", T_NULL: "null",
            T_STR: "a string"}.get(_t(node), f"a value tagged {_t(node)}")


def parse(text: str, fnd: Findings) -> YamlDoc | None:
    """Parse namespace.yaml text; None when it is not YAML at all (an error is recorded)."""
    loader = _loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        fnd.error(f"YAML syntax error: {what}", line=mark.line + 1 if mark else None,
                  hint="check indentation, quoting and brackets on this line; quote "
                       "hostlists in flow lists: [\"n1\", \"n[2-4,6]\"]")
        return None
    except yaml.YAMLError as exc:
        line = None
        pos = getattr(exc, "position", None)
        if isinstance(pos, int):
            line = text.count("\n", 0, pos) + 1
        fnd.error(f"YAML error: {exc}", line=line)
        return None
    finally:
        loader.dispose()

    doc = YamlDoc(defaults=None, defaults_line=None, entries=[], top_bpf=None,
                  has_node_confs=False)
    if root is None or (isinstance(root, yaml.ScalarNode) and _t(root) == T_NULL):
        fnd.warn("the file has neither defaults nor node_confs: jobns is disabled on every node",
                 line=1, hint="add a defaults section with a base_path")
        return doc
    if not isinstance(root, yaml.MappingNode):
        fnd.error(f"the top level must be a mapping with defaults and node_confs, not {_kind(root)}",
                  line=_line(root))
        return doc
    for knode, vnode in _pairs(root, fnd, "top level"):
        key = knode.value
        if key == "defaults":
            doc.defaults_line = _line(knode)
            if isinstance(vnode, yaml.ScalarNode) and _t(vnode) == T_NULL:
                doc.defaults = {}
                fnd.warn("defaults is empty", line=_line(knode), key="defaults")
            else:
                doc.defaults = _options(vnode, fnd, "defaults")
        elif key == "node_confs":
            doc.has_node_confs = True
            doc.entries = _node_confs(vnode, fnd)
        elif key == "disable_bpf_token":
            v = _bool(vnode, fnd, key)
            if v is not _INVALID:
                doc.top_bpf = Setting(v, _line(knode), key)
            fnd.warn("disable_bpf_token at the top level is silently ignored by Slurm; jobns "
                     "applies it as a default", line=_line(knode), key=key,
                     hint="move it under defaults (or a node_confs entry's options)")
        elif key in OPTION_KEYS:
            fnd.warn(f"{key} at the top level is ignored", line=_line(knode), key=key,
                     hint="options belong under defaults or node_confs[].options")
        else:
            _unknown(fnd, key, _line(knode), TOP_KEYS, "top level")
    if doc.defaults is None and not doc.has_node_confs:
        fnd.warn("the file has neither defaults nor node_confs: jobns is disabled on every node",
                 line=1, hint="add a defaults section with a base_path")
    return doc


def _pairs(mapping, fnd: Findings, where: str):
    """Yield (key node, value node) with string keys; report duplicates and odd keys."""
    seen: dict[str, int] = {}
    for knode, vnode in mapping.value:
        if not isinstance(knode, yaml.ScalarNode) or _t(knode) not in (T_STR, T_MERGE):
            fnd.error(f"keys in {where} must be plain names, not {_kind(knode)}",
                      line=_line(knode))
            continue
        if _t(knode) == T_MERGE:
            fnd.error("YAML merge keys (<<) are not supported", line=_line(knode), key="<<",
                      hint="write the keys out; Slurm does not support them either")
            continue
        key = knode.value
        if key in seen:
            fnd.warn(f"duplicate key in {where} (first at line {seen[key]}); the last value is used",
                     line=_line(knode), key=key, hint="remove one of them")
        seen[key] = _line(knode)
        yield knode, vnode


def _unknown(fnd: Findings, key: str, line: int, known, where: str) -> None:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "known keys: " + ", ".join(known)
    # An error, not a warning: a misspelt base_path (or defaults) would otherwise leave
    # the node without a base_path, and its jobs would run without their namespace.
    fnd.error(f"unknown key in {where}", line=line, key=key, hint=hint)


def _node_confs(vnode, fnd: Findings) -> list:
    if isinstance(vnode, yaml.ScalarNode) and _t(vnode) == T_NULL:
        return []
    if not isinstance(vnode, yaml.SequenceNode):
        fnd.error(f"node_confs must be a list of {{nodes, options}} entries, not {_kind(vnode)}",
                  line=_line(vnode), key="node_confs")
        return []
    entries = []
    for i, item in enumerate(vnode.value):
        where = f"node_confs[{i}]"
        if not isinstance(item, yaml.MappingNode):
            fnd.error(f"{where} must be a mapping with nodes and options, not {_kind(item)}",
                      line=_line(item), key="node_confs")
            continue
        hostlists: list = []
        options: dict = {}
        have = set()
        for knode, v in _pairs(item, fnd, where):
            key = knode.value
            have.add(key)
            if key == "nodes":
                hostlists = _nodes(v, fnd, where)
            elif key == "options":
                if isinstance(v, yaml.ScalarNode) and _t(v) == T_NULL:
                    fnd.warn(f"{where}.options is empty", line=_line(knode), key="options")
                else:
                    options = _options(v, fnd, f"{where}.options")
            elif key in OPTION_KEYS:
                fnd.error(f"{key} must be inside {where}.options", line=_line(knode), key=key,
                          hint="indent it under options:")
            else:
                _unknown(fnd, key, _line(knode), ENTRY_KEYS, where)
        for req in ENTRY_KEYS:
            if req not in have:
                fnd.error(f"{where} has no {req}", line=_line(item), key=req,
                          hint="each node_confs entry needs nodes: and options:")
        entries.append(Entry(i, _line(item), hostlists, options))
    return entries


def _nodes(v, fnd: Findings, where: str) -> list:
    items = v.value if isinstance(v, yaml.SequenceNode) else [v]
    if isinstance(v, yaml.MappingNode):
        fnd.error(f"{where}.nodes must be a hostlist string or a list of them, not a mapping",
                  line=_line(v), key="nodes")
        return []
    if not items:
        fnd.warn(f"{where}.nodes is empty: the entry matches no node", line=_line(v),
                 key="nodes")
    out = []
    for item in items:
        if not isinstance(item, yaml.ScalarNode) or _t(item) not in (T_STR,):
            hint = "quote it" if isinstance(item, yaml.ScalarNode) else None
            fnd.error(f"{where}.nodes entries must be strings, got {_kind(item)}",
                      line=_line(item), key="nodes", hint=hint)
            continue
        try:
            h = hl.parse(item.value)
            out.append(h)
            for problem in h.slurm_problems():
                fnd.warn(problem, line=_line(item), key="nodes",
                         hint="split the range if Slurm also reads this file")
        except hl.HostlistError as exc:
            fnd.error(f"{item.value!r} is not a valid hostlist: {exc}", line=_line(item),
                      key="nodes", hint="write names like n1 or ranges like n[2-4,6]")
    return out


def _options(vnode, fnd: Findings, where: str) -> dict:
    """Parse an options/defaults mapping into {field: Setting} (present, non-empty keys)."""
    if not isinstance(vnode, yaml.MappingNode):
        fnd.error(f"{where} must be a mapping of options, not {_kind(vnode)}",
                  line=_line(vnode))
        return {}
    out: dict[str, Setting] = {}
    for knode, v in _pairs(vnode, fnd, where):
        key = knode.value
        line = _line(knode)
        if key in BOOL_KEYS:
            val = _bool(v, fnd, key)
        elif key in WAIT_KEYS:
            val = _wait(v, fnd, key)
        elif key == "base_path":
            val = _str(v, fnd, key)
            if val == "":
                fnd.warn("an empty base_path is ignored", line=line, key=key,
                         hint="write none to disable jobns here")
            elif isinstance(val, str) and not is_none_path(val) and not check_abs_path(
                    val, fnd, line, key, "base_path"):
                val = _INVALID
        elif key in SCRIPT_KEYS:
            val = _str(v, fnd, key)
            if isinstance(val, str) and val and not check_script(val, fnd, line, key):
                val = _INVALID
        elif key == "dirs":
            val = _dirs(v, fnd, key, line)
        elif key == "dir_confs":
            val = _dir_confs(v, fnd, key, line)
        elif key == "clone_ns_flags":
            val = _flags(v, fnd, key, line)
        elif key in ("nodes", "options"):
            fnd.error(f"{key} does not belong in {where}", line=line, key=key,
                      hint="nodes and options are keys of a node_confs entry")
            continue
        else:
            _unknown(fnd, key, line, OPTION_KEYS, where)
            continue
        # Slurm's merge: strings count only when non-empty.
        if val is _INVALID or val is None or val == "" or val == ():
            continue
        out[key] = Setting(val, line, key)
    return out


def _bool(v, fnd: Findings, key: str):
    if isinstance(v, yaml.ScalarNode) and _t(v) == T_BOOL:
        return v.value.lower() in ("true", "yes", "on")
    hint = "write true or false"
    if isinstance(v, yaml.ScalarNode) and _t(v) == T_STR and v.value.lower() in (
            "true", "false", "yes", "no", "on", "off"):
        hint = "write true or false without quotes"
    fnd.error(f"expected true or false, got {_kind(v)}"
              + (f" {v.value!r}" if isinstance(v, yaml.ScalarNode) else ""),
              line=_line(v), key=key, hint=hint)
    return _INVALID


def _wait(v, fnd: Findings, key: str):
    if isinstance(v, yaml.ScalarNode) and _t(v) in (T_INT, T_STR):
        text = v.value.strip()
        if _DECIMAL.match(text):
            if _t(v) == T_INT and len(text) > 1 and text[0] == "0":
                fnd.error(f"{text} has a leading zero: YAML 1.1 reads it as octal "
                          f"{int(text, 8) if set(text) <= set('01234567') else text}, "
                          f"Slurm reads {int(text)}", line=_line(v), key=key,
                          hint=f"write {int(text)}")
                return _INVALID
            n = int(text)
            if n > MAX_WAIT:
                fnd.error(f"{n} seconds is too large", line=_line(v), key=key,
                          hint=f"use at most {MAX_WAIT}")
                return _INVALID
            return n
        if text.startswith("-") and _DECIMAL.match(text[1:]):
            fnd.error(f"a wait cannot be negative ({text})", line=_line(v), key=key,
                      hint="use a number of seconds; 0 means the default of 10")
            return _INVALID
    fnd.error("expected a non-negative whole number of seconds, got "
              + _kind(v) + (f" {v.value!r}" if isinstance(v, yaml.ScalarNode) else ""),
              line=_line(v), key=key, hint="e.g. 10")
    return _INVALID


def _str(v, fnd: Findings, key: str):
    """A string value; None for null; _INVALID (with a finding) for anything else."""
    if isinstance(v, yaml.ScalarNode):
        if _t(v) == T_STR:
            return v.value
        if _t(v) == T_NULL:
            return None
        if _t(v) == T_BOOL:
            fnd.error(f"YAML 1.1 reads the unquoted {v.value!r} as a boolean, not a string",
                      line=_line(v), key=key, hint=f'quote it: "{v.value}"')
            return _INVALID
        if _t(v) in (T_INT, T_FLOAT):
            fnd.error(f"expected a string, YAML read {v.value!r} as a number",
                      line=_line(v), key=key, hint=f'quote it: "{v.value}"')
            return _INVALID
    fnd.error(f"expected a string, got {_kind(v)}", line=_line(v), key=key)
    return _INVALID


def _str_items(v, fnd: Findings, key: str):
    """A string or a list of strings, as a list; _INVALID on a type error."""
    if isinstance(v, yaml.SequenceNode):
        out = []
        for item in v.value:
            s = _str(item, fnd, key)
            if s is _INVALID:
                return _INVALID
            if s is None:
                fnd.error("a list item is empty", line=_line(item), key=key)
                return _INVALID
            out.append((s, _line(item)))
        return out
    s = _str(v, fnd, key)
    if s is _INVALID or s is None:
        return s
    return s


def _dirs(v, fnd: Findings, key: str, line: int):
    items = _str_items(v, fnd, key)
    if items is _INVALID or items is None:
        return items
    if isinstance(items, str):
        if items == "":
            return None
        dirs = split_dirs(items)
    else:
        if not items:
            return None
        dirs = []
        for s, _ln in items:
            if "," in s:
                fnd.error(f"list item {s!r} holds more than one directory", line=_ln, key=key,
                          hint="give one directory per list item")
                return _INVALID
            dirs.append(s)
    checked = check_dirs(dirs, fnd, line, key)
    return _INVALID if checked is None else checked


def _dir_confs(v, fnd: Findings, key: str, line: int):
    """dir_confs: a list of {path, base_path, options, tmpfs}; a tuple of LocatedDir."""
    if isinstance(v, yaml.ScalarNode) and _t(v) == T_NULL:
        return None
    if not isinstance(v, yaml.SequenceNode):
        fnd.error(f"dir_confs must be a list of {{path, options, tmpfs, base_path}} entries, "
                  f"not {_kind(v)}", line=_line(v), key=key)
        return _INVALID
    if not v.value:
        fnd.error("dir_confs lists no directory", line=line, key=key,
                  hint="leave it out for the default /tmp,/dev/shm")
        return _INVALID
    out = []
    seen: dict[str, int] = {}
    ok = True
    for i, item in enumerate(v.value):
        where = f"dir_confs[{i}]"
        eline = _line(item)
        if not isinstance(item, yaml.MappingNode):
            fnd.error(f"{where} must be a mapping with path (and options, tmpfs, base_path), "
                      f"not {_kind(item)}", line=eline, key=key)
            ok = False
            continue
        vals: dict = {}
        for knode, vnode in _pairs(item, fnd, where):
            k = knode.value
            if k in ("path", "base_path", "options"):
                vals[k] = (_str(vnode, fnd, k), _line(knode))
            elif k == "tmpfs":
                vals[k] = (_bool(vnode, fnd, k), _line(knode))
            else:
                _unknown(fnd, k, _line(knode), DIR_KEYS, where)
        if any(val is _INVALID for val, _ in vals.values()):
            ok = False
            continue
        path, pline = vals.get("path", (None, eline))
        if not path:
            fnd.error(f"{where} has no path", line=eline, key="path",
                      hint="each dir_confs entry needs path: /some/dir")
            ok = False
            continue
        if not check_dir_path(path, fnd, pline, "path"):
            ok = False
            continue
        norm = posixpath.normpath(path)
        if norm in seen:
            fnd.error(f"dir_confs path {path} is listed twice (first at line {seen[norm]})",
                      line=pline, key="path", hint="remove the duplicate")
            ok = False
            continue
        seen[norm] = pline
        tmpfs, tline = vals.get("tmpfs", (False, None))
        if norm == SHM_DIR and not tmpfs:
            if "tmpfs" in vals:
                fnd.warn(f"{SHM_DIR} is always a fresh tmpfs; tmpfs: false is ignored",
                         line=tline, key="tmpfs", hint="remove tmpfs: false")
            tmpfs = True
        base, bline = vals.get("base_path", (None, None))
        if base == "":
            base = None
        if base is not None:
            if tmpfs:
                fnd.warn(f"base_path of {path} is ignored: a tmpfs has no backing dir",
                         line=bline, key="base_path", hint="remove it")
                base = None
            elif not check_abs_path(base, fnd, bline, "base_path", "dir_confs base_path"):
                ok = False
                continue
        opts, oline = vals.get("options", (None, None))
        options: tuple = ()
        if opts:
            options = parse_dir_options(opts, bool(tmpfs), path, fnd, oline, "options")
            if options is None:
                ok = False
                continue
        out.append(LocatedDir(DirConf(path=path, tmpfs=bool(tmpfs), options=options,
                                      base_path=base), pline, bline))
    return tuple(out) if ok else _INVALID


def _flags(v, fnd: Findings, key: str, line: int):
    items = _str_items(v, fnd, key)
    if items is _INVALID or items is None:
        return items
    if isinstance(items, str):
        tokens = items.split(",")
    else:
        tokens = [t for s, _ in items for t in s.split(",")]
    if not any(t.strip() for t in tokens):
        return None
    return parse_flags(tokens, fnd, line, key)


def select(doc: YamlDoc, node: str) -> tuple[dict, str]:
    """Merged settings for `node` and the origin text."""
    if doc.defaults is None and not doc.has_node_confs:
        return {}, "the file has neither defaults nor node_confs"
    settings: dict[str, Setting] = {}
    if doc.top_bpf is not None:
        settings["disable_bpf_token"] = doc.top_bpf
    if doc.defaults is not None:
        settings.update(doc.defaults)
    for entry in doc.entries:
        if any(node in h for h in entry.hostlists):
            settings.update(entry.options)
            return settings, f"node_confs[{entry.index}] (line {entry.line})"
    if doc.defaults is not None:
        return settings, f"defaults (line {doc.defaults_line})"
    return {}, "no node_confs entry matches and there are no defaults"


def candidates(doc: YamlDoc):
    """(settings, origin) for every distinct way a node can be configured (for check)."""
    base: dict[str, Setting] = {}
    if doc.top_bpf is not None:
        base["disable_bpf_token"] = doc.top_bpf
    if doc.defaults is not None:
        base.update(doc.defaults)
        yield dict(base), f"defaults (line {doc.defaults_line})"
    for entry in doc.entries:
        merged = dict(base)
        merged.update(entry.options)
        yield merged, f"node_confs[{entry.index}] (line {entry.line})"
