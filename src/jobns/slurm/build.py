"""Build the SPANK plugin (against the installed <slurm/spank.h>), the native
job_container/namespace plugin (against a configured Slurm source tree) and the PAM
session module (against <security/pam_modules.h>) on the node."""

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
    return _compile("build-plugin", SOURCE, output, ["-I", find_include_dir(include_dir)],
                    find_compiler(cc), [])


def build_pam(output: str, *, include_dir: str | None = None, cc: str | None = None) -> str:
    """Compile the PAM session module to `output` (atomically replaced: sshd processes
    keep the old file mapped). Returns the compiler's warnings, if any."""
    inc = find_pam_include_dir(include_dir)
    try:
        compiler = find_compiler(cc)
    except OperationError as e:
        raise OperationError("build-pam", e.message) from e
    return _compile("build-pam", PAM_SOURCE, output, ["-I", inc], compiler, ["-lpam"])


def _compile(step: str, source: str, output: str, includes: list[str], compiler: str,
             extra: list[str]) -> str:
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, mode=0o755, exist_ok=True)
    src = resources.files("jobns.slurm").joinpath(source)
    with resources.as_file(src) as src_path:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.splitext(source)[0]}.", suffix=".so",
                                   dir=out_dir)
        os.close(fd)
        cmd = [compiler, *CFLAGS, *includes, "-o", tmp, str(src_path), *extra]
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
                   runtime: str | None = None, prolog: bool = True,
                   service: bool = True) -> str:
    parts = ["required", plugin, f"jobns={jobns}"]
    if config:
        parts.append(f"config={config}")
    if runtime:
        parts.append(f"runtime={runtime}")
    if not prolog:
        parts.append("prolog=no")
    elif not service:
        parts.append("service=no")
    return " ".join(parts)


def pam_line(module: str, runtime: str | None = None) -> str:
    """The /etc/pam.d/sshd line (after pam_slurm_adopt)."""
    parts = ["session", "required", module]
    if runtime:
        parts.append(f"runtime={runtime}")
    return " ".join(parts)


# ---------------------------------------------------------------- native plugins

NATIVE_SOURCE = "jobns_native.c"
PLUGIN_DIR_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
                         "/usr/lib64/slurm", "/usr/lib/slurm", "/usr/local/lib/slurm",
                         "/opt/slurm/lib/slurm")


class SlurmTree:
    """A configured Slurm source tree: its version and which plugin interface it has."""

    def __init__(self, src: str, build: str, version: str, version_number: int, api: int):
        self.src, self.build = src, build
        self.version, self.version_number, self.api = version, version_number, api

    @property
    def namespace_api(self) -> bool:
        return self.api >= 2511

    @property
    def plugin_type(self) -> str:
        return "namespace/jobns" if self.namespace_api else "job_container/jobns"

    @property
    def filename(self) -> str:
        return self.plugin_type.replace("/", "_") + ".so"

    @property
    def conf_key(self) -> str:
        return "NamespaceType" if self.namespace_api else "JobContainerType"


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def interface_api(src: str) -> int:
    """Which variant of the job_container/namespace interface the tree declares (the
    JOBNS_API values of jobns_native.c), read from its interface header."""
    ns_h = os.path.join(src, "src", "interfaces", "namespace.h")
    jc_h = os.path.join(src, "src", "interfaces", "job_container.h")
    old_h = os.path.join(src, "src", "slurmd", "common", "job_container_plugin.h")
    if os.path.isfile(ns_h):
        text = " ".join(_read(ns_h).split())
        return 2605 if "namespace_g_stepd_delete(stepd_step_rec_t" in text else 2511
    if os.path.isfile(jc_h):
        text = " ".join(_read(jc_h).split())
        if "container_g_join(slurm_step_id_t" in text:
            return 2411
        if "container_g_create(" not in text:
            return 2405
        return 2302
    if os.path.isfile(old_h):
        return 2205
    raise OperationError("build-plugin", f"{src} has neither src/interfaces/namespace.h, "
                         "src/interfaces/job_container.h nor "
                         "src/slurmd/common/job_container_plugin.h: not a Slurm source tree "
                         "of 22.05 or later")


def slurm_tree(src: str, build_dir: str | None = None) -> SlurmTree:
    src = os.path.abspath(src)
    if not os.path.isfile(os.path.join(src, "slurm", "spank.h")) or \
            not os.path.isdir(os.path.join(src, "src", "slurmd")):
        raise OperationError("build-plugin", f"{src} is not a Slurm source tree "
                             "(no slurm/spank.h and src/slurmd)")
    build = os.path.abspath(build_dir) if build_dir else src
    config_h = os.path.join(build, "config.h")
    version_h = os.path.join(build, "slurm", "slurm_version.h")
    for path in (config_h, version_h):
        if not os.path.isfile(path):
            raise OperationError("build-plugin", f"{path} does not exist: the tree is not "
                                 "configured (run its ./configure with the options the "
                                 "installed Slurm was built with, or pass --slurm-build, the "
                                 "directory configure ran in)")
    text = _read(version_h)
    number = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[:2] == ["#define", "SLURM_VERSION_NUMBER"]:
            try:
                number = int(parts[2], 0)
            except ValueError:
                pass
    if number is None:
        raise OperationError("build-plugin", f"{version_h}: no SLURM_VERSION_NUMBER")
    version = f"{number >> 16}.{(number >> 8) & 0xff:02d}.{number & 0xff}"
    return SlurmTree(src, build, version, number, interface_api(src))


def slurm_plugin_dir(explicit: str | None = None) -> str | None:
    """Where the installed Slurm keeps its plugins: --slurm-plugin-dir, slurm.conf's
    PluginDir, else the first usual directory that holds Slurm plugins."""
    if explicit:
        return os.path.abspath(explicit)
    from jobns.slurm.live import DEFAULT_SLURM_CONF, slurm_conf_values
    conf = os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF
    plugin_dir = slurm_conf_values(conf).get("plugindir", "").strip()
    if plugin_dir:
        return plugin_dir
    for d in PLUGIN_DIR_CANDIDATES:
        if os.path.isfile(os.path.join(d, "select_cons_tres.so")) or \
                os.path.isfile(os.path.join(d, "auth_munge.so")):
            return d
    return None


def _c_string(value: str, what: str) -> str:
    if any(c in value for c in '"\\\n') or not value.isprintable():
        raise UsageError(f"{what} {value!r}: cannot be compiled into the plugin "
                         "(quotes, backslashes or control characters)")
    return f'"{value}"'


def build_native(output: str, tree: SlurmTree, *, jobns: str, config: str | None,
                 runtime: str, service: bool = True, cc: str | None = None) -> str:
    """Compile jobns_native.c against `tree` into `output` (atomically replaced).
    Returns the compiler's warnings, if any."""
    defines = [f"-DJOBNS_API={tree.api}", f"-DJOBNS_SERVICE={int(service)}",
               f"-DJOBNS_EXE={_c_string(jobns, 'jobns path')}",
               f"-DJOBNS_CONFIG={_c_string(config or '', 'config path')}",
               f"-DJOBNS_RUNTIME={_c_string(runtime, 'runtime dir')}"]
    includes = ["-I", tree.build] + (["-I", tree.src] if tree.src != tree.build else [])
    return _compile("build-plugin", NATIVE_SOURCE, output, includes, find_compiler(cc),
                    defines)
