"""Shared by the three readers: findings, located settings, value checks, and the step
that turns merged settings into a validated `NodeConfig`.

A reader parses its file into *located settings* (value + line + key as written), keyed
by `NodeConfig` field name, and collects *findings*. A finding is an error (the file is
unusable) or a warning (jobns runs, but the file is suspect: unknown keys, things Slurm
would treat differently). `check` reports both; `load` raises the first error and puts
warnings in `NodeConfig.warnings`.
"""

from __future__ import annotations

import os
import posixpath
import stat

from jobns.config.model import (CLONE_NEWNS, DEFAULT_DIRS, DEFAULT_WAIT, DIR_FLAGS,
                                KNOWN_CLONE_FLAGS, DirConf, NodeConfig, short_hostname)
from jobns.errors import ConfigError
from jobns._lazy import lazy
from jobns.values import Frozen, Record

re = lazy("re")

ERROR = "error"
WARNING = "warning"
MAX_WAIT = 2**32 - 2  # largest uint32 Slurm accepts that is not INFINITE

SCRIPT_FIELDS = ("init_script", "clone_ns_script", "clone_ns_epilog", "user_ns_script")


class Setting(Frozen):
    """One value from the file, with where it was written."""

    value: object
    line: int | None
    key: str


class Findings(Record):
    """Errors and warnings of one file, in the order found."""

    file: str
    items: list[tuple[str, ConfigError]] | None = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.items is None:
            self.items = []

    def error(self, message: str, *, line: int | None = None, key: str | None = None,
              hint: str | None = None) -> None:
        self.items.append((ERROR, ConfigError(message, file=self.file, line=line, key=key,
                                              hint=hint)))

    def warn(self, message: str, *, line: int | None = None, key: str | None = None,
             hint: str | None = None) -> None:
        self.items.append((WARNING, ConfigError(message, file=self.file, line=line, key=key,
                                                hint=hint)))

    def extend(self, other: "Findings") -> None:
        self.items.extend(other.items)

    @property
    def errors(self) -> list[ConfigError]:
        return [e for sev, e in self.items if sev == ERROR]

    @property
    def warnings(self) -> list[ConfigError]:
        return [e for sev, e in self.items if sev == WARNING]

    def sorted(self) -> list[ConfigError]:
        seen = set()
        out = []
        for _sev, e in sorted(self.items, key=lambda it: (it[1].line or 0)):
            text = str(e)
            if text not in seen:
                seen.add(text)
                out.append(e)
        return out


# ---------------------------------------------------------------- value checks

def check_abs_path(value: str, fnd: Findings, line: int | None, key: str, what: str) -> bool:
    """An absolute path without '..' components, NULs or surrounding whitespace."""
    if value != value.strip():
        fnd.error(f"{what} {value!r} has leading or trailing whitespace", line=line, key=key,
                  hint="Slurm does not trim it; remove the spaces")
        return False
    if "\0" in value:
        fnd.error(f"{what} contains a NUL byte", line=line, key=key)
        return False
    if not value.startswith("/"):
        fnd.error(f"{what} {value!r} is not an absolute path", line=line, key=key,
                  hint=f"write it as /{value.lstrip('./')}" if value else None)
        return False
    if ".." in value.split("/"):
        fnd.error(f"{what} {value!r} has a '..' component", line=line, key=key,
                  hint=f"write the resolved path {posixpath.normpath(value)}")
        return False
    return True


def check_script(value: str, fnd: Findings, line: int | None, key: str) -> bool:
    """Static check of a script path (absolute); existence is checked separately."""
    return check_abs_path(value, fnd, line, key, "script")


def script_problem(path: str) -> str | None:
    """Why `path` cannot be run as a hook script, or None if it can."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot use script {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"script {path} is not a regular file"
    if not os.access(path, os.X_OK):
        return f"script {path} is not executable"
    return None


def split_dirs(value: str) -> list[str]:
    """Slurm's Dirs: comma-separated; empty items are skipped, nothing is trimmed."""
    return [d for d in value.split(",") if d != ""]


def check_dirs(dirs: list[str], fnd: Findings, line: int | None, key: str) -> tuple[str, ...] | None:
    """Validate a dirs list; return it as a tuple, or None when it is unusable."""
    ok = True
    if not dirs:
        fnd.error("dirs lists no directory", line=line, key=key,
                  hint="leave it out for the default /tmp,/dev/shm")
        return None
    seen: set[str] = set()
    for d in dirs:
        if d != d.strip():
            fnd.error(f"dirs entry {d!r} has spaces around it", line=line, key=key,
                      hint="Slurm does not trim dirs entries; write them as "
                           + ",".join(x.strip() for x in dirs))
            ok = False
            continue
        if not check_abs_path(d, fnd, line, key, "dirs entry"):
            ok = False
            continue
        norm = posixpath.normpath(d)
        if norm == "/":
            fnd.error("dirs entry '/' would hide the whole file system", line=line, key=key)
            ok = False
            continue
        if norm in seen:
            fnd.error(f"dirs entry {d} is listed twice", line=line, key=key,
                      hint="remove the duplicate")
            ok = False
            continue
        seen.add(norm)
        if norm != d and norm != d.rstrip("/"):
            fnd.warn(f"dirs entry {d!r} is not in normal form ({norm})", line=line, key=key,
                     hint="the per-job directory name is made from the text as written")
    return tuple(dirs) if ok else None


# ---------------------------------------------------------------- dir_confs

# tmpfs mount data jobns knows (see tmpfs(5)); anything else is refused at config time
# instead of failing every job start with EINVAL.
TMPFS_DATA_KEYS = ("size", "nr_blocks", "nr_inodes", "mode", "uid", "gid", "huge", "mpol",
                   "noswap", "inode32", "inode64")
_TMPFS_BARE = ("noswap", "inode32", "inode64")
# Patterns are compiled on first use (re caches them): the job-start path, which loads a
# cached config, never needs them and so never imports re.
_SIZE_PAT = r"([0-9]+)([kKmMgGtT%]?)\Z"
SIZE_MEM_PAT = r"([0-9]+)%mem\Z"      # jobns extension: % of SLURM_JOB_MEM
_MODE_PAT = r"[0-7]{1,5}\Z"
_HUGE = ("never", "always", "within_size", "advise")
DIR_EXPANSIONS = ("j", "u")


class LocatedDir(Frozen):
    """A parsed dir_confs element with the line of the element and of its base_path."""

    conf: DirConf
    line: int | None
    base_line: int | None = None


def check_dir_path(value: str, fnd: Findings, line: int | None, key: str) -> bool:
    """A dir_confs path: absolute, not '/', only %j and %u as expansions."""
    if not check_abs_path(value, fnd, line, key, "dir_confs path"):
        return False
    if posixpath.normpath(value) == "/":
        fnd.error("dir_confs path '/' would hide the whole file system", line=line, key=key)
        return False
    for m in re.finditer(r"%(.?)", value):
        c = m.group(1)
        if c == "S":
            fnd.error(f"dir_confs path {value!r}: %S (the job's SLUID) is not supported",
                      line=line, key=key,
                      hint="SLUIDs exist only from Slurm 25.11 on and jobns does not receive "
                           "them; use %j (job id) or %u (user name)")
            return False
        if c not in DIR_EXPANSIONS:
            fnd.error(f"dir_confs path {value!r}: %{c} is not expanded by jobns",
                      line=line, key=key, hint="only %j (job id) and %u (user name) are")
            return False
    return True


def _check_size(name: str, value: str, fnd: Findings, line, key) -> bool:
    if name == "size" and re.match(SIZE_MEM_PAT, value):
        pct = int(re.match(SIZE_MEM_PAT, value).group(1))
        if not 1 <= pct <= 100:
            fnd.error(f"size={value}: the percentage of the job's memory must be 1 to 100",
                      line=line, key=key)
            return False
        return True
    m = re.match(_SIZE_PAT, value)
    if m is None or (name == "nr_blocks" and m.group(2) in ("%", "t", "T")):
        fnd.error(f"{name}={value} is not a valid size", line=line, key=key,
                  hint="write <number> optionally followed by k, m, g (KiB, MiB, GiB)"
                       + (", t or % (of RAM)" if name != "nr_blocks" else "")
                       + (", or N%mem (N% of the job's memory request, a jobns extension)"
                          if name == "size" else ""))
        return False
    if int(m.group(1)) == 0:
        fnd.warn(f"{name}=0 means no limit for tmpfs", line=line, key=key,
                 hint=f"leave {name} out for the kernel default, or give a limit")
    return True


def parse_dir_options(text: str, tmpfs: bool, path: str, fnd: Findings, line: int | None,
                      key: str) -> tuple[str, ...] | None:
    """The tokens of a dir_confs `options` string, validated; None when unusable."""
    out: list[str] = []
    seen: set[str] = set()
    ok = True
    for tok in text.split(","):
        if tok == "":
            continue
        if tok != tok.strip() or " " in tok or "\t" in tok:
            fnd.error(f"option {tok!r} of {path} contains spaces", line=line, key=key,
                      hint="Slurm does not trim options; write them as "
                           + ",".join(t.strip() for t in text.split(",") if t.strip()))
            ok = False
            continue
        low = tok.lower()
        if low in DIR_FLAGS:
            if low not in out:
                out.append(low)
            continue
        name, eq, value = tok.partition("=")
        if not tmpfs:
            fnd.error(f"option {tok!r} of {path} is tmpfs mount data, but {path} is a bind "
                      "mount", line=line, key=key,
                      hint="set tmpfs: true for a size-limited tmpfs; bind mounts take only "
                           + ",".join(DIR_FLAGS) + "; Slurm would only log and ignore it")
            ok = False
            continue
        if name not in TMPFS_DATA_KEYS:
            fnd.error(f"unknown option {tok!r} for the tmpfs at {path}", line=line, key=key,
                      hint="flags: " + ",".join(DIR_FLAGS) + "; tmpfs data: "
                           + ", ".join(TMPFS_DATA_KEYS))
            ok = False
            continue
        if name in seen:
            fnd.error(f"{name} is given twice for {path}", line=line, key=key,
                      hint="keep one of them")
            ok = False
            continue
        seen.add(name)
        if name in _TMPFS_BARE:
            if eq:
                fnd.error(f"tmpfs option {name} takes no value", line=line, key=key)
                ok = False
                continue
        elif not eq or value == "":
            fnd.error(f"tmpfs option {name} needs a value ({name}=...)", line=line, key=key)
            ok = False
            continue
        elif name in ("size", "nr_blocks", "nr_inodes"):
            if not _check_size(name, value, fnd, line, key):
                ok = False
                continue
        elif name == "mode":
            if not re.match(_MODE_PAT, value) or int(value, 8) > 0o7777:
                fnd.error(f"mode={value} is not an octal mode", line=line, key=key,
                          hint="e.g. mode=0700 or mode=1777")
                ok = False
                continue
        elif name in ("uid", "gid"):
            if not value.isascii() or not value.isdigit():
                fnd.error(f"{name}={value} is not a numeric id", line=line, key=key)
                ok = False
                continue
        elif name == "huge" and value not in _HUGE:
            fnd.error(f"huge={value} is not valid", line=line, key=key,
                      hint="one of " + ", ".join(_HUGE))
            ok = False
            continue
        out.append(tok)
    return tuple(out) if ok else None


def _components(path: str) -> list[str]:
    return [c for c in posixpath.normpath(path).split("/") if c]


def _pattern_under(child: str, parent: str) -> str | None:
    """'yes' if path `child` is `parent` or below it, 'maybe' if only for some values of
    their %-expansions (a component with '%' matches any component), None if never."""
    c, p = _components(child), _components(parent)
    if len(c) < len(p):
        return None
    wild = False
    for a, b in zip(c, p):
        if a == b and "%" not in a:
            continue
        if "%" in a or "%" in b:
            wild = True
            continue
        return None
    return "maybe" if wild else "yes"


def _finalize_dir_confs(confs, base, settings, fnd, where, node: str,
                        hostname: str | None) -> tuple[DirConf, ...]:
    """Resolve per-dir base paths and check the dirs against the base and each other."""
    dkey = where("dir_confs")[1]
    if "dirs" in settings:
        line, key = where("dirs")
        fnd.warn(f"dirs is ignored: dir_confs (line {where('dir_confs')[0]}) takes precedence",
                 line=line, key=key, hint="remove dirs; Slurm discourages setting both")
    out = []
    for ld in confs:
        conf = ld.conf
        if conf.base_path is not None and base is not None:
            dbase = expand_base_path(conf.base_path, node,
                                     (hostname or short_hostname()) if "%h" in conf.base_path
                                     else "")
            if posixpath.normpath(dbase) != posixpath.normpath(base):
                fnd.error(f"dir_confs base_path {dbase} of {conf.path}: a per-directory "
                          "base_path other than the node's base_path is not supported by "
                          "jobns", line=ld.base_line, key="base_path",
                          hint=f"remove it (the backing dir then lives under {base}), or "
                               "use tmpfs: true")
            else:
                conf = conf.replace(base_path=base)
        out.append(conf)
        if base is None:
            continue
        rel = _pattern_under(conf.path, base)
        if rel:
            same = rel == "yes" and posixpath.normpath(conf.path) == posixpath.normpath(base)
            what = "the base path" if same else "under the base path"
            if rel != "yes":
                what = "possibly " + what
            (fnd.error if rel == "yes" else fnd.warn)(
                f"dir {conf.path} is {what} {base}",
                line=ld.line, key=dkey,
                hint="the base path cannot also be a private dir; choose a base outside "
                     "every dir (e.g. /var/lib/jobns)")
        rel = _pattern_under(base, conf.path)
        if rel and not (posixpath.normpath(conf.path) == posixpath.normpath(base)):
            (fnd.error if rel == "yes" else fnd.warn)(
                f"base path {base} {'lies' if rel == 'yes' else 'may lie'} under the private "
                f"dir {conf.path}", line=where("base_path")[0] or ld.line,
                key=where("base_path")[1],
                hint="jobs would hide the per-job directories; move the base outside every "
                     "dir (e.g. /var/lib/jobns)")
    for i, a in enumerate(confs):
        for b in confs[i + 1:]:
            for x, y in ((a, b), (b, a)):
                if posixpath.normpath(x.conf.path) != posixpath.normpath(y.conf.path) and \
                        _pattern_under(x.conf.path, y.conf.path) == "yes":
                    fnd.error(f"dir {x.conf.path} lies under dir {y.conf.path}: one mount "
                              "would hide or lack the other", line=x.line, key=dkey,
                              hint="list directories that do not contain each other")
    return tuple(out)


def parse_flags(tokens: list[str], fnd: Findings, line: int | None, key: str) -> tuple[str, ...]:
    """Clone flags from tokens; unknown tokens are warnings (Slurm ignores them)."""
    found = {CLONE_NEWNS}
    for tok in tokens:
        t = tok.strip().upper()
        if not t:
            continue
        if t in KNOWN_CLONE_FLAGS:
            found.add(t)
        else:
            fnd.warn(f"unknown clone flag {tok.strip()!r} is ignored", line=line, key=key,
                     hint="known flags: " + ", ".join(KNOWN_CLONE_FLAGS))
    return tuple(f for f in KNOWN_CLONE_FLAGS if f in found)


def is_none_path(value: str) -> bool:
    """Slurm's test: the first four characters are 'none', in any case."""
    return value[:4].lower() == "none"


def expand_base_path(value: str, node: str, hostname: str) -> str:
    """Replace the first %h with the short hostname and the first %n with the node name."""
    return value.replace("%h", hostname, 1).replace("%n", node, 1)


def _under(child: str, parent: str) -> bool:
    child = posixpath.normpath(child)
    parent = posixpath.normpath(parent)
    return child == parent or child.startswith(parent.rstrip("/") + "/")


# ---------------------------------------------------------------- finalize

class _Relations(Record):
    """What the relation checks read: the merged settings (value and where each came from),
    the resolved base path, dirs and clone flags."""

    settings: dict
    val: object
    where: object
    base: str | None
    dirs: tuple
    flags: tuple


def _check_dirs_and_base(rel: _Relations, fnd: Findings) -> None:
    """A private dir may not be, contain, or lie under the base path (classic dirs; for
    dir_confs, _finalize_dir_confs checks each entry)."""
    if rel.base is None or rel.settings.get("dir_confs") is not None:
        return
    base = rel.base
    bline, bkey = rel.where("base_path")
    dline, dkey = rel.where("dirs")
    dirs_given = "dirs" in rel.settings
    for d in rel.dirs:
        if not d.startswith("/"):
            continue
        if _under(d, base):
            same = posixpath.normpath(d) == posixpath.normpath(base)
            fnd.error(f"dir {d} is {'the base path' if same else 'under the base path'} "
                      f"{base}", line=dline if dirs_given else bline,
                      key=dkey if dirs_given else bkey,
                      hint="the base path cannot also be a private dir; choose a base "
                           "outside every dir (e.g. /var/lib/jobns)")
        elif _under(base, d):
            default_note = "" if dirs_given else " (the default dirs are /tmp,/dev/shm)"
            fnd.error(f"base path {base} lies under the private dir {d}{default_note}",
                      line=bline, key=bkey,
                      hint="jobs would hide the per-job directories; move the base "
                           "outside every dir (e.g. /var/lib/jobns). Slurm does not "
                           "catch this")


def _check_atime_with_user_ns(rel: _Relations, fnd: Findings) -> None:
    """In a user namespace the kernel locks a bind mount's atime flags to its source's."""
    if "CLONE_NEWUSER" not in rel.flags:
        return
    for ld in (rel.val("dir_confs") or ()):
        atime = [f for f in ld.conf.flags if f in ("noatime", "nodiratime", "relatime")]
        if atime and not ld.conf.tmpfs:
            fnd.warn(f"{','.join(atime)} on the bind mount {ld.conf.path} fails (EPERM) "
                     "with CLONE_NEWUSER unless its source mount already has exactly "
                     "these atime flags: the kernel locks them", line=ld.line,
                     key=rel.where("dir_confs")[1],
                     hint="remove the atime option, or use tmpfs: true")


def _check_user_ns_script_has_user_ns(rel: _Relations, fnd: Findings) -> None:
    if rel.val("user_ns_script") and "CLONE_NEWUSER" not in rel.flags:
        line, key = rel.where("user_ns_script")
        fnd.warn("user_ns_script only runs when clone_ns_flags has CLONE_NEWUSER", line=line,
                 key=key, hint="add CLONE_NEWUSER to clone_ns_flags or remove the script")


# Checks across settings, one function per concern, run in this order by finalize (checks
# of a single value run where it is read: check_abs_path, check_dirs, parse_dir_options...).
RELATION_CHECKS = (_check_dirs_and_base, _check_atime_with_user_ns,
                   _check_user_ns_script_has_user_ns)


def finalize(settings: dict[str, Setting], *, node: str, hostname: str | None, fnd: Findings,
             source: str, origin: str, key_names: dict[str, str]) -> NodeConfig:
    """Turn merged settings into a NodeConfig, adding relation findings to `fnd`.

    `key_names` maps field names to the format's spelling, for findings about values
    that came from a default rather than from the file.
    """
    def val(name, default=None):
        s = settings.get(name)
        return default if s is None else s.value

    def where(name):
        s = settings.get(name)
        return (s.line, s.key) if s is not None else (None, key_names.get(name, name))

    base = val("base_path")
    if base is not None:
        line, key = where("base_path")
        if is_none_path(base):
            if base.lower() != "none":
                fnd.warn(f"base_path {base!r} disables jobns on this node because it starts "
                         "with 'none'", line=line, key=key,
                         hint="write exactly none if that is meant")
            base = None
        else:
            unknown = set(re.findall(r"%(.)", base)) - {"h", "n"}
            if unknown:
                fnd.warn("base_path: only %h and %n are replaced; "
                         + ", ".join("%" + c for c in sorted(unknown)) + " stay as written",
                         line=line, key=key)
            if "%h" in base:
                base = expand_base_path(base, node, hostname or short_hostname())
            else:
                base = expand_base_path(base, node, "")
            if not check_abs_path(base, fnd, line, key, "base_path"):
                base = None
    dirs = val("dirs", DEFAULT_DIRS)
    dir_confs: tuple[DirConf, ...] = ()
    if settings.get("dir_confs") is not None:
        dir_confs = _finalize_dir_confs(val("dir_confs"), base, settings, fnd, where, node,
                                        hostname)
        dirs = tuple(c.path for c in dir_confs)
    flags = val("clone_ns_flags", (CLONE_NEWNS,))
    rel = _Relations(settings=settings, val=val, where=where, base=base, dirs=tuple(dirs),
                     flags=flags)
    for check in RELATION_CHECKS:
        check(rel, fnd)
    w1 = val("clone_ns_script_wait", 0) or DEFAULT_WAIT
    w2 = val("clone_ns_epilog_wait", 0) or DEFAULT_WAIT
    return NodeConfig(
        node_name=node,
        base_path=base,
        auto_base_path=bool(val("auto_base_path", False)),
        dirs=tuple(dirs),
        dir_confs=dir_confs,
        shared=bool(val("shared", False)),
        clone_ns_flags=flags,
        init_script=val("init_script"),
        clone_ns_script=val("clone_ns_script"),
        clone_ns_script_wait=w1,
        clone_ns_epilog=val("clone_ns_epilog"),
        clone_ns_epilog_wait=w2,
        user_ns_script=val("user_ns_script"),
        disable_bpf_token=bool(val("disable_bpf_token", False)),
        entire_step_in_ns=bool(val("entire_step_in_ns", False)),
        source=source,
        origin=origin,
    )


def check_effective_scripts(cfg: NodeConfig, settings: dict[str, Setting], fnd: Findings,
                            key_names: dict[str, str]) -> None:
    """Error for each script of this node's config that cannot be run here."""
    if not cfg.enabled:
        return
    for name in SCRIPT_FIELDS:
        path = getattr(cfg, name)
        if not path:
            continue
        problem = script_problem(path)
        if problem:
            s = settings.get(name)
            fnd.error(problem, line=s.line if s else None,
                      key=s.key if s else key_names.get(name, name),
                      hint="install it, make it executable (chmod 755), or remove the key")


# Filesystems that several hosts mount at once: one base_path there is every node's.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
              "glusterfs", "fuse.glusterfs", "9p", "afs", "panfs", "pvfs2", "orangefs",
              "ocfs2", "gfs2", "fuse.sshfs", "fuse.ceph", "fuse.beegfs", "virtiofs")


def fs_type(path: str) -> str | None:
    """Filesystem type of the mount that holds `path` (its nearest existing parent)."""
    path = os.path.realpath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    best, kind = "", None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mp = fields[4].replace("\\040", " ")
                sep = fields.index("-")
                if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                    best, kind = mp, fields[sep + 1]
    except (OSError, ValueError, IndexError):
        return None
    return kind


def check_base_here(cfg: NodeConfig, base: Setting, fnd: Findings,
                    key_names: dict[str, str]) -> None:
    """Findings about base_path as it is on this host: missing without auto_base_path
    (the first job would fail and drain the node), or on a filesystem other hosts share
    without %n/%h (every node would see, and could remove, the others' jobs)."""
    value = cfg.base_path
    key = base.key
    literal = "%" not in str(base.value)
    if literal and not cfg.auto_base_path and not os.path.isdir(value):
        fnd.warn(f"base_path {value} does not exist on this host and auto_base_path is "
                 "false: the first job here fails and drains the node", line=base.line,
                 key=key, hint=f"create it (mkdir -m 0755 {value}) or set "
                 f"{key_names.get('auto_base_path', 'auto_base_path')} to true")
    kind = fs_type(value.split("%", 1)[0] or "/")
    if literal and kind in NETWORK_FS:
        fnd.warn(f"base_path {value} is on a {kind} filesystem that other hosts mount too, "
                 "and names no node: every node would keep its jobs in the same directory",
                 line=base.line, key=key, hint=f"give each node its own: {value}/%n "
                 "(or a local disk)")
