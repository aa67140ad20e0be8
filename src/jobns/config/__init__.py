"""Configuration: discovery, the three readers, and the public entry points.

Public API (used by the CLI, the lifecycle and the adapters):

- ``discover(explicit: str | None) -> str | None``: the config file to use, or None for
  the built-in default. Order: explicit (--config), $JOBNS_CONFIG, namespace.yaml then
  job_container.conf next to $SLURM_CONF (default /etc/slurm/slurm.conf).
- ``load(path: str | None, node: str) -> NodeConfig``: the effective config for `node`.
  Raises ConfigError when the file cannot be used; warnings go to ``NodeConfig.warnings``.
- ``check(path: str, node: str | None = None) -> list[ConfigError]``: every finding
  (errors and warnings), sorted by line; an empty list means the file is clean.
- ``explain(path, node) -> str``: which entry or line applied to `node`, and the result.
- ``format_show(cfg) -> str``: the human table of ``jobns config show``.
- ``detect(path) -> (format, target)``: which reader a path selects.

Formats: ``yaml`` (namespace.yaml), ``conf`` (job_container.conf) and ``plugstack``
(spank-private-tmp arguments). A path may carry an explicit ``yaml:``, ``conf:`` or
``plugstack:`` prefix; otherwise ``.yaml``/``.yml`` means yaml, a file whose content has
a ``required|optional something.so`` line means plugstack, and anything else is read as
job_container.conf. ``plugstack:base=/x mount=/tmp`` (arguments instead of a path) is
accepted too.
"""

from __future__ import annotations

import os
import stat

from jobns.config.model import NodeConfig, builtin_default, short_hostname
from jobns.errors import ConfigError

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
FORMATS = ("yaml", "conf", "plugstack")
MAX_FILE = 16 << 20
_RAW_ARGS = r"\s*(base|mount)="

__all__ = ["discover", "load", "check", "explain", "format_show", "detect", "NodeConfig",
           "ConfigError"]


def discover(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    env = os.environ.get("JOBNS_CONFIG")
    if env:
        return env
    conf_dir = os.path.dirname(os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)
    for name in ("namespace.yaml", "job_container.conf"):
        candidate = os.path.join(conf_dir, name)
        if os.path.exists(candidate):
            return candidate
    return None


def detect(path: str, text: str | None = None) -> tuple[str, str]:
    """(format, target) for `path`. `target` is the file path, or the argument string for
    ``plugstack:`` followed by arguments. `text`, if given, is the file's content; without
    it a file whose name does not decide is read (prefix or name is enough otherwise).
    """
    fmt, target = _split_prefix(path)
    if fmt is not None:
        return fmt, target
    low = path.lower()
    if low.endswith((".yaml", ".yml")):
        return "yaml", path
    if os.path.basename(low) == "plugstack.conf":
        return "plugstack", path
    if text is None:
        try:
            text = _read_text(path)
        except ConfigError:
            return "conf", path
    from jobns.config.plugstack_reader import is_plugstack_text

    return ("plugstack" if is_plugstack_text(text) else "conf"), path


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _not_regular(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO", ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _read_text(path: str) -> str:
    """The file's text. Only a regular file is read: it is opened without blocking (a FIFO
    would otherwise wait for a writer for ever, hanging a prolog) and checked by fstat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=path,
                          hint="give an existing file with --config or $JOBNS_CONFIG") from exc
    try:
        what = _not_regular(os.fstat(fd).st_mode)
        if what is not None:
            raise ConfigError(f"cannot read the config file: it is {what}, not a regular file",
                              file=path, hint="give a regular file with --config or "
                              "$JOBNS_CONFIG")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=path,
                          hint="give an existing file with --config or $JOBNS_CONFIG") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_FILE:
        raise ConfigError(f"the file is larger than {MAX_FILE >> 20} MiB", file=path)
    return _decode(data, path)


def _decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
                          file=path, line=line, hint="save it as UTF-8") from None
    if "\0" in text:
        raise ConfigError("the file contains a NUL byte", file=path,
                          line=text.count("\n", 0, text.index("\0")) + 1,
                          hint="it does not look like a text file")
    return text


class _Parsed:
    """A parsed file of any format, able to select settings for a node."""

    def __init__(self, fmt: str, source: str, text: str | None, fnd):
        from jobns.config import _common

        self.fmt = fmt
        self.source = source
        self.fnd = fnd
        self.doc = None
        self.args = None          # plugstack: settings dict or None
        self.args_origin = ""
        if fmt == "yaml":
            from jobns.config import yaml_reader as r
            self.doc = r.parse(text, fnd)
            self.key_names = r.KEY_NAMES
        elif fmt == "conf":
            from jobns.config import conf_reader as r
            self.doc = r.parse(text, fnd)
            self.key_names = r.KEY_NAMES
        else:
            from jobns.config import plugstack_reader as r
            self.key_names = r.KEY_NAMES
            if text is None:  # raw argument string
                self.args = r.parse_args(source_args(source), None, fnd)
                self.args_origin = "arguments"
            else:
                found = r.find_args(text, fnd)
                if found is not None:
                    args, line = found
                    self.args = r.parse_args(args, line, fnd)
                    self.args_origin = f"line {line}"
        self._common = _common

    def select(self, node: str) -> tuple[dict, str, list]:
        if self.fmt == "yaml":
            from jobns.config import yaml_reader
            if self.doc is None:
                return {}, "unreadable file", []
            s, origin = yaml_reader.select(self.doc, node)
            return s, origin, []
        if self.fmt == "conf":
            from jobns.config import conf_reader
            return conf_reader.select(self.doc, node)
        if self.args is None:
            return {}, "unusable arguments", []
        return dict(self.args), self.args_origin, []

    def candidates(self):
        if self.fmt == "yaml":
            from jobns.config import yaml_reader
            return list(yaml_reader.candidates(self.doc)) if self.doc is not None else []
        if self.fmt == "conf":
            from jobns.config import conf_reader
            return list(conf_reader.candidates(self.doc))
        return [(dict(self.args), self.args_origin)] if self.args is not None else []

    def finalize(self, settings: dict, node: str, hostname: str | None, origin: str, fnd):
        return self._common.finalize(settings, node=node, hostname=hostname, fnd=fnd,
                                     source=self.source, origin=origin,
                                     key_names=self.key_names)


def source_args(target: str) -> list[str]:
    return target.split()


def _split_prefix(path: str) -> tuple[str | None, str]:
    for fmt in FORMATS:
        if path.startswith(fmt + ":"):
            return fmt, path[len(fmt) + 1:]
    return None, path


def _is_raw_args(fmt: str | None, target: str) -> bool:
    if fmt != "plugstack" or os.path.exists(target):
        return False
    import re
    return bool(re.match(_RAW_ARGS, target))


def _open(path: str):
    """(format, source, text-or-None, stat-or-None) for a path as given to load/check."""
    fmt, target = _split_prefix(path)
    if _is_raw_args(fmt, target):
        return "plugstack", target, None, None
    try:
        st = os.stat(target)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=target,
                          hint="give an existing file with --config or $JOBNS_CONFIG") from exc
    text = _read_text(target)
    if fmt is None:
        fmt, _ = detect(target, text)
    return fmt, target, text, st


def _parse(path: str):
    from jobns.config._common import Findings

    fmt, source, text, st = _open(path)
    if text is not None:
        source = os.path.abspath(source)   # config show and every finding name it so
    fnd = Findings(file=source if text is not None else "plugstack arguments")
    if text is None:
        parsed = _Parsed(fmt, source, None, fnd)
        parsed.source = "plugstack arguments"
    else:
        parsed = _Parsed(fmt, source, text, fnd)
    return parsed, st


def _raise_first(errors: list[ConfigError]) -> None:
    errors = sorted(errors, key=lambda e: e.line or 0)
    first = errors[0]
    hint = first.hint
    if len(errors) > 1:
        more = f"{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}: run " \
               f"`jobns config check {first.file or ''}`".rstrip()
        hint = f"{hint}; {more}" if hint else more
    raise ConfigError(first.message, file=first.file, line=first.line, key=first.key,
                      hint=hint)


def load(path: str | None, node: str, *, hostname: str | None = None,
         use_cache: bool = True, check_scripts: bool = True) -> NodeConfig:
    """The effective configuration of `node` from `path` (None: the built-in default).

    Raises ConfigError if the file cannot be read, has errors anywhere, or this node's
    effective configuration is unusable (bad base_path/dirs relation, a script that
    cannot be run here). Warnings are returned in ``NodeConfig.warnings``.
    `hostname` replaces ``%h`` (default: this machine's short hostname); `check_scripts`
    False skips the test that this node's scripts exist (for showing another node's
    config); `use_cache` False bypasses the config cache.
    """
    if path is None:
        return _layout(builtin_default(node))
    from jobns.config import _common

    if hostname is None:
        hostname = short_hostname()
    key = None
    if use_cache:
        key = _cache_key(path, node, hostname)
        if key is not None:
            from jobns.config import cache
            cfg = cache.get(key)
            if cfg is not None:
                if check_scripts:
                    _check_scripts(cfg, {}, _common.Findings(file=cfg.source), raise_=True)
                return _layout(cfg)
    parsed, _st = _parse(path)
    fnd = parsed.fnd
    if fnd.errors:
        _raise_first(fnd.errors)
    settings, origin, _applied = parsed.select(node)
    cfg = parsed.finalize(settings, node, hostname, origin, fnd)
    if fnd.errors:
        _raise_first(fnd.errors)
    cfg = _with_warnings(cfg, fnd)
    if key is not None and _cache_key(path, node, hostname) == key:
        from jobns.config import cache
        cache.put(key, cfg)  # only if the file did not change while it was read
    if check_scripts:
        _check_scripts(cfg, settings, _common.Findings(file=parsed.source), raise_=True,
                       key_names=parsed.key_names)
    else:   # another node's view: its scripts need not exist here; say so
        other = _common.Findings(file=parsed.source)
        _common.check_effective_scripts(cfg, settings, other, parsed.key_names)
        if other.errors:
            cfg = cfg.replace(warnings=cfg.warnings + tuple(
                f"{e} (not on this host; at job start on node {node} it is an error)"
                for e in other.errors))
    return _layout(cfg)


def _layout(cfg: NodeConfig) -> NodeConfig:
    """Several slurmd's on this host (slurm.conf says so): each node's jobs in its own
    directory below base_path."""
    from jobns.slurm.nodes import with_layout
    return with_layout(cfg)


def _cache_key(path: str, node: str, hostname: str) -> dict | None:
    """The cache key for a config file, or None when it cannot be cached."""
    from jobns.config import cache

    fmt, target = _split_prefix(path)
    if _is_raw_args(fmt, target):
        return None
    try:
        st = os.stat(target)
    except OSError:
        return None
    if _not_regular(st.st_mode) is not None:
        return None
    return cache.make_key(target, st, fmt or "auto", node, hostname)


def _with_warnings(cfg: NodeConfig, fnd) -> NodeConfig:
    warnings = tuple(str(w) for w in fnd.sorted() if w in fnd.warnings)
    return cfg.replace(warnings=warnings)


def _check_scripts(cfg: NodeConfig, settings: dict, fnd, *, raise_: bool,
                   key_names: dict | None = None) -> None:
    from jobns.config import _common

    _common.check_effective_scripts(cfg, settings, fnd, key_names or {})
    if raise_ and fnd.errors:
        _raise_first(fnd.errors)


def check(path: str, node: str | None = None) -> list[ConfigError]:
    """Every finding in `path` (errors and warnings), sorted by line; [] when clean.

    Without `node`, every entry or line is checked as it would apply to some node; with
    `node`, that node's effective configuration is checked too.
    """
    from jobns.config import _common

    try:
        parsed, _st = _parse(path)
    except ConfigError as exc:
        return [exc]
    fnd = parsed.fnd
    scripts_seen: set[str] = set()
    bases_seen: set[str] = set()
    for settings, origin in parsed.candidates():
        cfg = parsed.finalize(settings, "%n", "%h", origin, fnd)
        base = settings.get("base_path")
        if cfg is not None and cfg.enabled and base is not None and \
                cfg.base_path not in bases_seen:
            bases_seen.add(cfg.base_path)
            _common.check_base_here(cfg, base, fnd, parsed.key_names)
        for name in _common.SCRIPT_FIELDS:
            s = settings.get(name)
            if s is None or s.value in scripts_seen:
                continue
            scripts_seen.add(s.value)
            problem = _common.script_problem(s.value)
            if problem:
                fnd.error(problem, line=s.line, key=s.key,
                          hint="install it, make it executable (chmod 755), or remove the key")
    if node is not None:
        settings, origin, _applied = parsed.select(node)
        parsed.finalize(settings, node, None, origin, fnd)
    return fnd.sorted()


def explain(path: str | None, node: str) -> str:
    """Which entry or line of `path` applies to `node`, and the resulting configuration."""
    if path is None:
        return "no config file: the built-in default applies\n\n" + format_show(
            builtin_default(node))
    parsed, _st = _parse(path)
    settings, origin, applied = parsed.select(node)
    lines = [f"file:    {parsed.source} (read as {parsed.fmt})", f"node:    {node}",
             f"applies: {origin}"]
    if len(applied) > 1:
        lines.append("         lines " + ", ".join(map(str, applied))
                     + " all apply; each overrides the keys it sets, the last wins")
    if parsed.fmt == "yaml" and parsed.doc is not None:
        lines.append("         (the first node_confs entry whose nodes contain the node "
                     "wins; its options override defaults)")
    if settings:
        lines.append("values set by the file:")
        for name in sorted(settings):
            s = settings[name]
            where = f"line {s.line}" if s.line else "arguments"
            lines.append(f"  {name:<22} {_fmt(s.value):<30} {s.key} ({where})")
    try:
        cfg = load(path, node, use_cache=False, check_scripts=False)
    except ConfigError as exc:
        lines.append(f"error:   {exc}")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append(format_show(cfg))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if value and not isinstance(value[0], str):
            return " ".join(_fmt_dir(v) for v in value)
        return ",".join(value)
    return str(value)


def _fmt_dir(d) -> str:
    """One dir_confs element (a DirConf or a located one) as `path[tmpfs](options)`."""
    d = getattr(d, "conf", d)
    text = d.path + ("[tmpfs]" if d.tmpfs else "")
    if d.options:
        text += "(" + ",".join(d.options) + ")"
    if d.base_path:
        text += f"[base {d.base_path}]"
    return text


def format_show(cfg: NodeConfig) -> str:
    """The human-readable table of ``jobns config show``."""
    rows = [("node_name", cfg.node_name),
            ("enabled", "yes" if cfg.enabled else "no (no base_path, or base_path none)")]
    for name in NodeConfig._fields:
        if name in ("node_name", "warnings"):
            continue
        value = getattr(cfg, name)
        if name == "dir_confs":
            if value:
                rows.append((name, " ".join(_fmt_dir(d) for d in value)))
            continue
        rows.append((name, "-" if value is None else _fmt(value)))
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    for w in cfg.warnings:
        out.append(f"warning: {w}")
    return "\n".join(out) + "\n"
