"""A validated on-disk cache of loaded NodeConfigs, so job starts skip YAML parsing.

One marshal file per (config path, node) under ``$JOBNS_RUNTIME_DIR/config-cache/``
(default ``/run/jobns/config-cache/``). An entry is used only when its key matches
exactly: the config file's identity (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns),
the format, node name, short hostname (for ``%h``) and the jobns version.

Trust: the directory and the file must be owned by root (or by the current user, for an
unprivileged process, which then only trusts what it wrote itself), must not be group-
or world-writable, and must not be symlinks; otherwise the entry is ignored. Writes are
atomic (temporary file + rename). No cache failure ever fails a load: every error here
means "no cache".
"""

from __future__ import annotations

import marshal
import os
import stat
import zlib

from jobns.config.model import KNOWN_CLONE_FLAGS, DirConf, NodeConfig, runtime_dir

SUBDIR = "config-cache"
MAX_ENTRY = 1 << 20
_FORMAT_VERSION = 2


def cache_dir() -> str:
    return os.path.join(runtime_dir(), SUBDIR)


def make_key(path: str, st: os.stat_result, fmt: str, node: str, hostname: str) -> dict:
    from jobns import __version__

    return {
        "v": _FORMAT_VERSION,
        "jobns": __version__,
        "path": os.path.abspath(path),
        "format": fmt,
        "file": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
        "node": node,
        "hostname": hostname,
    }


def _entry_path(key: dict) -> str:
    # Only a file name: the full key is stored in the entry and compared on every read,
    # so a collision is a cache miss, never a wrong answer.
    raw = f"{key['path']}\0{key['format']}\0{key['node']}".encode("utf-8", "surrogateescape")
    digest = f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"
    return os.path.join(cache_dir(), digest + ".cache")


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not (st.st_mode & 0o022)


def get(key: dict) -> NodeConfig | None:
    """The cached NodeConfig for `key`, or None (missing, stale, untrusted or corrupt)."""
    try:
        dst = os.lstat(cache_dir())
        if not stat.S_ISDIR(dst.st_mode) or not _trusted(dst):
            return None
        fd = os.open(_entry_path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or not _trusted(fst) or fst.st_size > MAX_ENTRY:
                return None
            data = os.read(fd, MAX_ENTRY + 1)
        finally:
            os.close(fd)
        entry = marshal.loads(data)   # the file is root-owned and not writable by others
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        return _from_dict(entry.get("config"))
    except (OSError, ValueError, TypeError, KeyError, EOFError, UnicodeDecodeError,
            RecursionError):
        return None


def put(key: dict, cfg: NodeConfig) -> bool:
    """Store `cfg` under `key`; False (never an exception) if that was not possible."""
    tmp = None
    try:
        d = cache_dir()
        parent = os.path.dirname(d)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755, exist_ok=True)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        dst = os.lstat(d)
        if not stat.S_ISDIR(dst.st_mode) or not _trusted(dst):
            return False
        target = _entry_path(key)
        tmp = f"{target}.{os.getpid()}.tmp"
        config = cfg.as_dict()
        config.pop("jobs_path", None)   # a property; node_dir is applied after the cache
        payload = marshal.dumps({"key": key, "config": config})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
        return True
    except (OSError, ValueError, TypeError):
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fields_of(annotation: str) -> tuple[str, ...]:
    """NodeConfig's fields declared with that type (the model is the one field list)."""
    return tuple(f for f in NodeConfig._fields if NodeConfig.__annotations__[f] == annotation)


_STR_OR_NONE = _fields_of("str | None")
_BOOLS = _fields_of("bool")
_INTS = _fields_of("int")
_STRS = _fields_of("str")
_LISTS = _fields_of("tuple[str, ...]")
# a field of another type needs a check in _from_dict; until then no entry is trusted
_UNCHECKED = set(NodeConfig._fields) - set(_STR_OR_NONE + _BOOLS + _INTS + _STRS + _LISTS +
                                           ("dir_confs",))


def _from_dict(d) -> NodeConfig | None:
    """Rebuild a NodeConfig, checking every field's type; None if anything is off."""
    if not isinstance(d, dict) or _UNCHECKED:
        return None
    if set(d) != set(NodeConfig._fields):
        return None
    dir_confs = _dir_confs(d["dir_confs"])
    if dir_confs is None:
        return None
    for k in _STR_OR_NONE:
        if d[k] is not None and not isinstance(d[k], str):
            return None
    for k in _BOOLS:
        if not isinstance(d[k], bool):
            return None
    for k in _INTS:
        if type(d[k]) is not int or d[k] < 1:
            return None
    for k in _STRS:
        if not isinstance(d[k], str):
            return None
    for k in _LISTS:
        if not isinstance(d[k], list) or not all(isinstance(x, str) for x in d[k]):
            return None
    if not set(d["clone_ns_flags"]) <= set(KNOWN_CLONE_FLAGS):
        return None
    args = dict(d)
    for k in _LISTS:
        args[k] = tuple(d[k])
    args["dir_confs"] = dir_confs
    return NodeConfig(**args)


def _dir_confs(items) -> tuple[DirConf, ...] | None:
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"path", "tmpfs", "options", "base_path"}:
            return None
        if not isinstance(item["path"], str) or not isinstance(item["tmpfs"], bool) or \
                not isinstance(item["options"], str) or \
                not (item["base_path"] is None or isinstance(item["base_path"], str)):
            return None
        options = tuple(t for t in item["options"].split(",") if t)
        out.append(DirConf(path=item["path"], tmpfs=item["tmpfs"], options=options,
                           base_path=item["base_path"]))
    return tuple(out)
