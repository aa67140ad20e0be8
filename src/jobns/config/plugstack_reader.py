"""spank-private-tmp (hpc2n ``private-tmpdir.so``) plugstack arguments, for migration.

Input is either a plugstack.conf (the ``private-tmpdir.so`` line is used; other plugins'
lines are ignored) or the bare argument string, e.g.
``base=/var/lib/jobns mount=/var/tmp mount=/tmp``.

Argument rules are the plugin's: ``base=`` may repeat and each ``mount=`` uses the most
recent base (``/tmp/slurm`` before any base), at most 16 mounts, mounts absolute, any
other argument is an error. jobns has one base path per node, so the mounts must all
use the same base.

Mapping: base → base_path, mounts → dirs (in order), auto_base_path = true (the plugin
creates its directories), shared = true (the plugin makes ``/`` rshared and the job
namespace rslave: host mounts propagate into jobs, which is jobns' ``shared``).
"""

from __future__ import annotations

import os

from jobns.config._common import Findings, Setting, check_dirs

PLUGIN = "private-tmpdir.so"
DEFAULT_BASE = "/tmp/slurm"
MAX_MOUNTS = 16
KEY_NAMES = {"base_path": "base", "dirs": "mount"}


def is_plugstack_text(text: str) -> bool:
    """True if some non-comment line looks like a plugstack entry (``required x.so``)."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] in ("required", "optional") and words[1].endswith(".so"):
            return True
    return False


def find_args(text: str, fnd: Findings) -> tuple[list[str], int | None] | None:
    """The arguments of the private-tmpdir.so line and its line number."""
    found = []
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("required", "optional"):
            if len(words) >= 2 and os.path.basename(words[1]) == PLUGIN:
                found.append((words[2:], n))
        elif words[0] != "include":
            fnd.warn(f"line is not a plugstack entry: {' '.join(words)[:60]!r}", line=n,
                     hint="plugstack lines start with required, optional or include")
    if not found:
        fnd.error(f"no {PLUGIN} line found", line=None,
                  hint=f"expected a line like: required {PLUGIN} base=/path mount=/tmp")
        return None
    if len(found) > 1:
        fnd.error(f"{PLUGIN} is listed more than once (lines "
                  + ", ".join(str(n) for _a, n in found) + ")", line=found[1][1],
                  hint="keep one line")
        return None
    return found[0]


def parse_args(args: list[str], line: int | None, fnd: Findings) -> dict | None:
    """Settings from the plugin's arguments, or None when they are unusable."""
    base = DEFAULT_BASE
    explicit_bases: list[str] = []
    mounts: list[tuple[str, str]] = []
    ok = True
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "base" and sep:
            if not value:
                fnd.error("empty base=", line=line, key="base", hint="give an absolute path")
                ok = False
                continue
            base = value
            explicit_bases.append(value)
        elif key == "mount" and sep:
            if not value.startswith("/"):
                fnd.error(f"mount {value!r} is not an absolute path", line=line, key="mount",
                          hint="spank-private-tmp requires absolute mounts")
                ok = False
                continue
            mounts.append((value, base))
        else:
            fnd.error(f"unknown argument {arg!r}", line=line, key=key or arg,
                      hint="private-tmpdir.so takes only base=PATH and mount=PATH")
            ok = False
    if len(mounts) > MAX_MOUNTS:
        fnd.error(f"{len(mounts)} mounts given; spank-private-tmp allows at most {MAX_MOUNTS}",
                  line=line, key="mount")
        ok = False
    if not mounts:
        fnd.error("no mount= argument: nothing would be private", line=line, key="mount",
                  hint="add e.g. mount=/tmp mount=/var/tmp")
        ok = False
    used = []
    for _m, b in mounts:
        if b not in used:
            used.append(b)
    if len(used) > 1:
        fnd.error("mounts use different bases (" + ", ".join(used) + "); jobns keeps every "
                  "private dir of a job under one base_path", line=line, key="base",
                  hint="give a single base= before all mount= arguments")
        ok = False
    for b in explicit_bases:
        if b not in used and mounts:
            fnd.warn(f"base={b} is not used by any mount", line=line, key="base")
    if not ok:
        return None
    dirs = check_dirs([m for m, _b in mounts], fnd, line, "mount")
    if dirs is None:
        return None
    settings = {
        "base_path": Setting(used[0], line, "base"),
        "dirs": Setting(dirs, line, "mount"),
        "auto_base_path": Setting(True, line, "base"),
        "shared": Setting(True, line, "mount"),
    }
    return settings
