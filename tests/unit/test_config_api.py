"""Public API: discover, detect, load/check/explain/format_show, the cache, speed, imports."""

import json
import marshal
import os
import subprocess
import sys
import time

import pytest

import jobns.config as config
from jobns.config import cache, check, detect, discover, explain, format_show, load
from jobns.config.model import NodeConfig
from jobns.errors import ConfigError


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    d = tmp_path / "run"
    monkeypatch.setenv("JOBNS_RUNTIME_DIR", str(d))
    return d


def big_yaml(path, n=1000):
    out = ["defaults:", "  base_path: /var/ns", "  shared: true", "node_confs:"]
    for i in range(n):
        out += [f'  - nodes: ["r{i}n[1-64]", "gpu{i}-[001-016]"]', "    options:",
                f"      base_path: /var/nvme/e{i}", f"      clone_ns_script_wait: {i % 50 + 1}",
                "      dirs: /tmp,/var/tmp", f"      shared: {'true' if i % 2 else 'false'}"]
    path.write_text("\n".join(out) + "\n")
    return str(path)


# ------------------------------------------------------------------ discover / detect

def test_discover_order(tmp_path, monkeypatch):
    monkeypatch.delenv("JOBNS_CONFIG", raising=False)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert discover(None) is None
    (tmp_path / "job_container.conf").write_text("BasePath=/a\n")
    assert discover(None) == str(tmp_path / "job_container.conf")
    (tmp_path / "namespace.yaml").write_text("defaults: {base_path: /a}\n")
    assert discover(None) == str(tmp_path / "namespace.yaml")
    monkeypatch.setenv("JOBNS_CONFIG", "/env/x.yaml")
    assert discover(None) == "/env/x.yaml"
    assert discover("/explicit.conf") == "/explicit.conf"


@pytest.mark.parametrize("name,content,fmt", [
    ("namespace.yaml", "", "yaml"),
    ("x.YML", "", "yaml"),
    ("job_container.conf", "BasePath=/a\n", "conf"),
    ("plugstack.conf", "", "plugstack"),
    ("other.conf", "required private-tmpdir.so base=/a mount=/tmp\n", "plugstack"),
    ("other.conf", "# required x.so\nBasePath=/a\n", "conf"),
])
def test_detect(tmp_path, name, content, fmt):
    p = tmp_path / name
    p.write_text(content)
    assert detect(str(p)) == (fmt, str(p))


@pytest.mark.parametrize("prefix", ["yaml", "conf", "plugstack"])
def test_detect_prefix(prefix):
    assert detect(f"{prefix}:/etc/x") == (prefix, "/etc/x")


def test_explicit_prefix_overrides_the_name(tmp_path):
    p = tmp_path / "site.txt"
    p.write_text("defaults:\n  base_path: /var/a\n")
    assert load(f"yaml:{p}", "n1", use_cache=False).base_path == "/var/a"
    with pytest.raises(ConfigError):
        load(f"conf:{p}", "n1", use_cache=False)


# ------------------------------------------------------------------ load basics

def test_no_path_gives_builtin_default():
    cfg = load(None, "n1")
    assert cfg == NodeConfig(node_name="n1") and cfg.origin == "built-in default"


@pytest.mark.parametrize("data,words", [
    (b"\xff\xfe defaults", "not UTF-8"),
    (b"BasePath=/a\x00\n", "NUL"),
])
def test_unreadable_content(tmp_path, data, words):
    p = tmp_path / "job_container.conf"
    p.write_bytes(data)
    with pytest.raises(ConfigError, match=words):
        load(str(p), "n1", use_cache=False)
    assert any(words in str(e) for e in check(str(p)))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as ei:
        load(str(tmp_path / "nope.yaml"), "n1")
    assert ei.value.file.endswith("nope.yaml")
    assert [e.message for e in check(str(tmp_path / "nope.yaml"))][0].startswith("cannot read")


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "job_container.conf"
    p.write_bytes(b"\xef\xbb\xbfBasePath=/a\n")
    assert load(str(p), "n1", use_cache=False).base_path == "/a"


def test_format_show_and_json_keys(tmp_path):
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: /var/a\n  clone_ns_flags: [CLONE_NEWPID]\n")
    cfg = load(str(p), "n1", use_cache=False)
    text = format_show(cfg)
    assert "base_path             /var/a" in text
    assert "clone_ns_flags        CLONE_NEWPID,CLONE_NEWNS" in text
    assert "origin                defaults (line 1)" in text
    d = cfg.as_dict()
    assert d["clone_ns_flags"] == ["CLONE_NEWPID", "CLONE_NEWNS"] and d["dirs"] == ["/tmp", "/dev/shm"]
    json.dumps(d)


def test_explain_yaml(tmp_path):
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: /var/a\nnode_confs:\n  - nodes: n1\n"
                 "    options: {shared: true}\n")
    text = explain(str(p), "n1")
    assert "applies: node_confs[0] (line 4)" in text
    assert "shared                 true" in text and "(line 5)" in text
    assert "applies: defaults (line 1)" in explain(str(p), "n2")
    assert "built-in default" in explain(None, "n1")


# ------------------------------------------------------------------ cache

def test_cache_hit_miss_and_invalidation(tmp_path, runtime):
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: /var/a\n")
    cfg = load(str(p), "n1")
    files = list((runtime / "config-cache").iterdir())
    assert len(files) == 1
    assert (runtime / "config-cache").stat().st_mode & 0o777 == 0o700
    entry = marshal.loads(files[0].read_bytes())
    assert entry["key"]["node"] == "n1" and entry["config"]["base_path"] == "/var/a"
    # a hit returns the cached value without parsing: prove it by poisoning the entry
    entry["config"]["origin"] = "from cache"
    files[0].write_bytes(marshal.dumps(entry))
    assert load(str(p), "n1").origin == "from cache"
    assert load(str(p), "n1", use_cache=False) == cfg
    # another node has its own entry
    assert load(str(p), "n2").node_name == "n2"
    # changing the file invalidates
    time.sleep(0.01)
    p.write_text("defaults:\n  base_path: /var/b\n")
    assert load(str(p), "n1").base_path == "/var/b"


def test_cache_key_covers_identity_node_version_hostname(tmp_path):
    p = tmp_path / "f.conf"
    p.write_text("BasePath=/a\n")
    st = os.stat(p)
    key = cache.make_key(str(p), st, "auto", "n1", "h1")
    assert key["file"] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    assert key["node"] == "n1" and key["hostname"] == "h1" and key["jobns"]


@pytest.mark.parametrize("spoil", ["group_writable_file", "world_writable_dir", "symlink",
                                   "garbage", "wrong_types", "other_owner"])
def test_untrusted_or_corrupt_cache_is_ignored(tmp_path, runtime, spoil):
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: /var/a\n")
    load(str(p), "n1")
    d = runtime / "config-cache"
    f = next(d.iterdir())
    entry = marshal.loads(f.read_bytes())
    entry["config"]["base_path"] = "/evil"
    f.write_bytes(marshal.dumps(entry))
    assert load(str(p), "n1").base_path == "/evil"  # trusted: used
    if spoil == "group_writable_file":
        f.chmod(0o620)
    elif spoil == "world_writable_dir":
        d.chmod(0o777)
    elif spoil == "symlink":
        target = tmp_path / "elsewhere.json"
        target.write_bytes(f.read_bytes())
        f.unlink()
        f.symlink_to(target)
    elif spoil == "garbage":
        f.write_bytes(b"\xda{not marshal")
    elif spoil == "wrong_types":
        entry["config"]["shared"] = "yes"
        f.write_bytes(marshal.dumps(entry))
    elif spoil == "other_owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file away")
        os.chown(f, 12345, 12345)
    assert load(str(p), "n1").base_path == "/var/a"


def test_cache_write_failure_never_fails_load(tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("JOBNS_RUNTIME_DIR", str(blocker))
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: /var/a\n")
    assert load(str(p), "n1").base_path == "/var/a"
    assert cache.put({"path": "x", "format": "y", "node": "z"}, load(None, "n1")) is False


def test_cached_load_still_checks_scripts(tmp_path, runtime):
    script = tmp_path / "init.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    p = tmp_path / "namespace.yaml"
    p.write_text(f"defaults:\n  base_path: /var/a\n  init_script: {script}\n")
    load(str(p), "n1")
    script.unlink()
    with pytest.raises(ConfigError, match="No such file"):
        load(str(p), "n1")


def test_errors_are_not_cached(tmp_path, runtime):
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: rel\n")
    with pytest.raises(ConfigError):
        load(str(p), "n1")
    assert not (runtime / "config-cache").exists() or not list((runtime / "config-cache").iterdir())


# ------------------------------------------------------------------ speed and imports

def test_thousand_entry_yaml_cold_and_warm_give_the_same_answer(tmp_path, runtime):
    # how fast this is lives in bench/ (a test machine's load must not fail the suite)
    path = big_yaml(tmp_path / "namespace.yaml")
    cold = load(path, "gpu999-016", use_cache=False)
    assert cold.base_path == "/var/nvme/e999" and cold.origin == "node_confs[999] (line 5999)"
    load(path, "gpu999-016")
    warm = load(path, "gpu999-016")
    assert warm == cold
    assert list((runtime / "config-cache").iterdir())


def test_conf_path_imports_neither_yaml_nor_python_hostlist(tmp_path):
    p = tmp_path / "job_container.conf"
    p.write_text("NodeName=n[1-9] BasePath=/a\n")
    code = ("import sys, jobns.config as c; c.load(sys.argv[1], 'n3', use_cache=False); "
            "print('yaml' in sys.modules, 'hostlist' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_warm_cache_path_does_not_import_yaml(tmp_path, runtime):
    p = tmp_path / "namespace.yaml"
    p.write_text("defaults:\n  base_path: /var/a\n")
    load(str(p), "n1")
    code = ("import sys, jobns.config as c; c.load(sys.argv[1], 'n1'); "
            "print('yaml' in sys.modules)")
    env = dict(os.environ, JOBNS_RUNTIME_DIR=str(runtime))
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["False"]


def test_public_names():
    for name in ("discover", "load", "check", "explain", "format_show", "detect"):
        assert callable(getattr(config, name))
