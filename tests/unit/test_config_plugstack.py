"""spank-private-tmp plugstack arguments: file and raw argument forms."""

import pytest

from jobns.config import check, detect, load
from jobns.errors import ConfigError


def ld(path, node="n1"):
    return load(path, node, use_cache=False, check_scripts=False, hostname="host1")


PLUGSTACK = """\
# plugstack.conf
optional /usr/lib64/slurm/other.so foo=bar
required /usr/lib64/slurm/private-tmpdir.so base=/var/lib/jobns mount=/var/tmp mount=/tmp
include /etc/slurm/plugstack.conf.d/*.conf
"""


def test_plugstack_file(tmp_path):
    p = tmp_path / "plugstack.conf"
    p.write_text(PLUGSTACK)
    cfg = ld(str(p))
    assert cfg.base_path == "/var/lib/jobns"
    assert cfg.dirs == ("/var/tmp", "/tmp")
    assert cfg.auto_base_path and cfg.shared
    assert cfg.origin == "line 3" and cfg.source == str(p)
    assert check(str(p)) == []


def test_plugstack_detected_by_content(tmp_path):
    p = tmp_path / "site-spank.txt"
    p.write_text(PLUGSTACK)
    assert detect(str(p))[0] == "plugstack"
    assert ld(str(p)).base_path == "/var/lib/jobns"


@pytest.mark.parametrize("args,base,dirs", [
    ("base=/var/x mount=/tmp", "/var/x", ("/tmp",)),
    ("base=/var/a base=/var/x mount=/tmp mount=/var/tmp", "/var/x", ("/tmp", "/var/tmp")),
    ("  base=/var/x   mount=/dev/shm ", "/var/x", ("/dev/shm",)),
])
def test_raw_arguments(args, base, dirs):
    cfg = ld("plugstack:" + args)
    assert (cfg.base_path, cfg.dirs) == (base, dirs)
    assert cfg.source == "plugstack arguments" and cfg.origin == "arguments"


def test_mount_before_base_uses_tmp_slurm():
    cfg = ld("plugstack:mount=/var/tmp")
    assert cfg.base_path == "/tmp/slurm" and cfg.dirs == ("/var/tmp",)


@pytest.mark.parametrize("args,words", [
    ("base=/a mount=/tmp base=/b mount=/var/tmp", "different bases"),
    ("mount=/tmp base=/var/x mount=/var/tmp", "different bases"),
    ("base=/a mount=tmp", "not an absolute path"),
    ("base=/a mount=/tmp size=10G", "unknown argument 'size=10G'"),
    ("base=/a", "no mount="),
    ("base= mount=/tmp", "empty base="),
    ("base=/a " + " ".join(f"mount=/m{i}" for i in range(17)), "at most 16"),
    ("mount=/tmp", "lies under the private dir /tmp"),          # default base /tmp/slurm
    ("base=/a mount=/tmp mount=/tmp", "twice"),
    ("base=rel mount=/tmp", "not an absolute path"),
])
def test_bad_arguments(args, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        ld("plugstack:" + args)
    assert any(words in str(e) for e in check("plugstack:" + args))


def test_sixteen_mounts_are_fine():
    cfg = ld("plugstack:base=/a " + " ".join(f"mount=/m{i}" for i in range(16)))
    assert len(cfg.dirs) == 16


@pytest.mark.parametrize("text,words", [
    ("required /x/other.so a=b\n", "no private-tmpdir.so line"),
    ("required private-tmpdir.so base=/a mount=/tmp\noptional private-tmpdir.so mount=/x\n",
     "more than once"),
])
def test_bad_plugstack_files(tmp_path, text, words):
    p = tmp_path / "plugstack.conf"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        ld(str(p))


def test_plugstack_prefix_with_a_file_path(tmp_path):
    p = tmp_path / "anything"
    p.write_text(PLUGSTACK)
    assert detect("plugstack:" + str(p)) == ("plugstack", str(p))
    assert ld("plugstack:" + str(p)).dirs == ("/var/tmp", "/tmp")
