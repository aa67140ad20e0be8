"""Build the SPANK plugin (against the installed <slurm/spank.h>) and the PAM session
module (against <security/pam_modules.h>) on the node."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources

from jobns.errors import OperationError, UsageError

SOURCE = "jobns_spank.c"
PLUGIN = "jobns_spank.so"
INCLUDE_DIRS = ("/usr/include", "/usr/local/include", "/opt/slurm/include")
HEADER_PACKAGES = "Debian/Ubuntu: apt-get install libslurm-dev; RHEL/Fedora: dnf install slurm-devel"
CFLAGS = ("-Wall", "-Wextra", "-O2", "-fPIC", "-shared")
PAM_SOURCE = "pam_jobns.c"
PAM_MODULE = "pam_jobns.so"
PAM_HEADER_PACKAGES = "Debian/Ubuntu: apt-get install libpam0g-dev; RHEL/Fedora: dnf install pam-devel"


def find_include_dir(explicit: str | None = None) -> str:
    """The directory that holds slurm/spank.h."""
    candidates = [explicit] if explicit else \
        [d for d in (os.environ.get("SLURM_INCLUDE_DIR"),) if d] + list(INCLUDE_DIRS)
    for d in candidates:
        if os.path.isfile(os.path.join(d, "slurm", "spank.h")):
            return d
    where = ", ".join(candidates)
    raise OperationError("build-plugin", f"slurm/spank.h not found in {where} "
                         f"(install Slurm's development headers: {HEADER_PACKAGES}; "
                         "or pass --include-dir DIR)")


def find_compiler(explicit: str | None = None) -> str:
    for cc in ([explicit] if explicit else [os.environ.get("CC"), "cc", "gcc"]):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    raise OperationError("build-plugin", "no C compiler found (install gcc, or pass --cc)")


def default_jobns() -> str:
    """Absolute path of the jobns executable that is running now."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "jobns" and os.access(argv0, os.X_OK):
        return os.path.abspath(argv0)
    candidate = os.path.join(sys.prefix, "bin", "jobns")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("jobns")
    if found:
        return os.path.abspath(found)
    raise UsageError("cannot find the jobns executable; pass --jobns /path/to/bin/jobns")


def find_pam_include_dir(explicit: str | None = None) -> str:
    """The directory that holds security/pam_modules.h."""
    candidates = [explicit] if explicit else list(INCLUDE_DIRS)
    for d in candidates:
        if os.path.isfile(os.path.join(d, "security", "pam_modules.h")):
            return d
    raise OperationError("build-pam", f"security/pam_modules.h not found in "
                         f"{', '.join(candidates)} (install the PAM development headers: "
                         f"{PAM_HEADER_PACKAGES}; or pass --include-dir DIR)")


def build(output: str, *, include_dir: str | None = None, cc: str | None = None) -> str:
    """Compile the plugin to `output` (atomically replaced: running slurmstepds keep the
    old file mapped). Returns the compiler's warnings, if any."""
    return _compile("build-plugin", SOURCE, output, find_include_dir(include_dir),
                    find_compiler(cc), [])


def build_pam(output: str, *, include_dir: str | None = None, cc: str | None = None) -> str:
    """Compile the PAM session module to `output` (atomically replaced: sshd processes
    keep the old file mapped). Returns the compiler's warnings, if any."""
    inc = find_pam_include_dir(include_dir)
    try:
        compiler = find_compiler(cc)
    except OperationError as e:
        raise OperationError("build-pam", e.message) from None
    return _compile("build-pam", PAM_SOURCE, output, inc, compiler, ["-lpam"])


def _compile(step: str, source: str, output: str, inc: str, compiler: str,
             libs: list[str]) -> str:
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, mode=0o755, exist_ok=True)
    src = resources.files("jobns.slurm").joinpath(source)
    with resources.as_file(src) as src_path:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.splitext(source)[0]}.", suffix=".so",
                                   dir=out_dir)
        os.close(fd)
        cmd = [compiler, *CFLAGS, "-I", inc, "-o", tmp, str(src_path), *libs]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OperationError(step, f"{shlex.join(cmd)} failed:\n"
                                     f"{proc.stderr.strip()}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return proc.stderr.strip()


def plugstack_line(plugin: str, jobns: str, *, config: str | None = None,
                   runtime: str | None = None, prolog: bool = True) -> str:
    parts = ["required", plugin, f"jobns={jobns}"]
    if config:
        parts.append(f"config={config}")
    if runtime:
        parts.append(f"runtime={runtime}")
    if not prolog:
        parts.append("prolog=no")
    return " ".join(parts)


def pam_line(module: str, runtime: str | None = None) -> str:
    """The /etc/pam.d/sshd line (after pam_slurm_adopt)."""
    parts = ["session", "required", module]
    if runtime:
        parts.append(f"runtime={runtime}")
    return " ".join(parts)
