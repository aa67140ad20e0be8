"""`jobns slurm build-plugin --native`: reading a Slurm source tree (which interface, which
version, configured or not) and the command line's checks. The plugin itself is built and
run against real Slurm trees by tests/slurm/test_slurm_native.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobns.errors import OperationError, UsageError
from jobns.slurm import build

JOBNS = os.path.join(os.path.dirname(sys.executable), "jobns")

# The declarations that tell the interfaces apart, as the trees write them.
HEADERS = {
    2205: ("src/slurmd/common/job_container_plugin.h",
           "extern int container_g_create(uint32_t job_id, uid_t uid);\n"),
    2302: ("src/interfaces/job_container.h",
           "extern int container_g_create(uint32_t job_id, uid_t uid);\n"
           "extern int container_g_join(uint32_t job_id, uid_t uid);\n"),
    2405: ("src/interfaces/job_container.h",
           "extern int container_g_join(uint32_t job_id, uid_t uid);\n"),
    2411: ("src/interfaces/job_container.h",
           "extern int container_g_join(slurm_step_id_t *step_id, uid_t uid,\n"
           "\t\t\t    bool step_create);\n"),
    2511: ("src/interfaces/namespace.h",
           "extern int namespace_g_stepd_delete(slurm_step_id_t *step_id);\n"),
    2605: ("src/interfaces/namespace.h",
           "extern int namespace_g_stepd_delete(stepd_step_rec_t *step);\n"),
}


def make_tree(root, api: int, version: int = 0x160508, configured: bool = True) -> str:
    src = root / "slurm-src"
    (src / "slurm").mkdir(parents=True)
    (src / "slurm" / "spank.h").write_text("/* spank */\n")
    (src / "src" / "slurmd").mkdir(parents=True)
    path, text = HEADERS[api]
    (src / path).parent.mkdir(parents=True, exist_ok=True)
    (src / path).write_text(text)
    if configured:
        (src / "config.h").write_text("#define HAVE_CONFIG_H 1\n")
        (src / "slurm" / "slurm_version.h").write_text(
            f"#ifndef X\n#define SLURM_VERSION_NUMBER 0x{version:06x}\n"
            "#define SLURM_VERSION_NUM(a,b,c) (((a) << 16) + ((b) << 8) + (c))\n#endif\n")
    return str(src)


@pytest.mark.parametrize("api", sorted(HEADERS))
def test_interface_read_from_the_tree(tmp_path, api):
    tree = build.slurm_tree(make_tree(tmp_path, api))
    assert tree.api == api
    if api >= 2511:
        assert (tree.plugin_type, tree.filename, tree.conf_key) == \
            ("namespace/jobns", "namespace_jobns.so", "NamespaceType")
    else:
        assert (tree.plugin_type, tree.filename, tree.conf_key) == \
            ("job_container/jobns", "job_container_jobns.so", "JobContainerType")


def test_version_from_the_configured_header(tmp_path):
    tree = build.slurm_tree(make_tree(tmp_path, 2605, version=0x1a0505))
    assert (tree.version, tree.version_number) == ("26.05.5", 0x1a0505)


def test_unconfigured_tree_is_refused_naming_the_file(tmp_path):
    src = make_tree(tmp_path, 2205, configured=False)
    with pytest.raises(OperationError) as e:
        build.slurm_tree(src)
    assert os.path.join(src, "config.h") in str(e.value)
    assert "configure" in str(e.value)


def test_separate_build_dir(tmp_path):
    src = make_tree(tmp_path, 2411, configured=False)
    bld = tmp_path / "build"
    (bld / "slurm").mkdir(parents=True)
    (bld / "config.h").write_text("\n")
    (bld / "slurm" / "slurm_version.h").write_text("#define SLURM_VERSION_NUMBER 0x180b05\n")
    tree = build.slurm_tree(src, str(bld))
    assert (tree.build, tree.version, tree.api) == (str(bld), "24.11.5", 2411)


def test_not_a_slurm_tree(tmp_path):
    with pytest.raises(OperationError, match="not a Slurm source tree"):
        build.slurm_tree(str(tmp_path))
    src = make_tree(tmp_path, 2205)
    os.unlink(os.path.join(src, HEADERS[2205][0]))
    with pytest.raises(OperationError, match="22.05 or later"):
        build.slurm_tree(src)


@pytest.mark.parametrize("bad", ['/opt/a"b', "/opt/a\\b", "/opt/a\nb"])
def test_paths_that_cannot_be_compiled_in(bad):
    with pytest.raises(UsageError):
        build._c_string(bad, "jobns path")
    assert build._c_string("/opt/jobns/bin/jobns", "x") == '"/opt/jobns/bin/jobns"'


def _cli(*args):
    return subprocess.run([JOBNS, "slurm", "build-plugin", *args], capture_output=True,
                          text=True)


def test_cli_native_needs_a_tree_and_refuses_spank_options(tmp_path):
    r = _cli("--native")
    assert r.returncode == 2 and "--slurm-src" in r.stderr
    src = make_tree(tmp_path, 2205)
    r = _cli("--native", "--slurm-src", src, "--no-prolog")
    assert r.returncode == 2 and "--no-prolog" in r.stderr
    r = _cli("--slurm-src", src)
    assert r.returncode == 2 and "--native" in r.stderr


def test_cli_output_must_carry_the_plugin_name(tmp_path):
    src = make_tree(tmp_path, 2605, version=0x1a0505)
    r = _cli("--native", "--slurm-src", src, "--output", str(tmp_path / "jobns.so"))
    assert r.returncode == 2 and "namespace_jobns.so" in r.stderr
    assert not (tmp_path / "jobns.so").exists()
