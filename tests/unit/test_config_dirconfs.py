"""namespace.yaml `dir_confs` (Slurm 26.05): parsing, merge, findings with lines, the cache,
`config show`, and the plan it produces (tmpfs data, %j/%u, size=N%mem)."""

import json
import marshal
import subprocess
import sys
import textwrap

import pytest

from jobns.config import format_show, load
from jobns.config.model import DirConf
from jobns.errors import ConfigError, OperationError
from jobns.job import Job
from jobns.plan import build_plan

from cfghelp import ld, one_finding, write


SLURM_TEST = """\
defaults:
  base_path: /var/lib/jobns
  dir_confs:
    - path: /var/tmp
      base_path: /var/lib/jobns
      options: noexec
    - path: /home/%u/test_ns
    - path: /dev/shm
      tmpfs: true
      options: size=64m
"""


# ------------------------------------------------------------------ parsing

def test_dir_confs_parse_and_dirs_are_their_paths(tmp_path):
    cfg = ld(write(tmp_path, SLURM_TEST))
    assert cfg.dirs == ("/var/tmp", "/home/%u/test_ns", "/dev/shm")
    assert cfg.dir_confs == (
        DirConf(path="/var/tmp", options=("noexec",), base_path="/var/lib/jobns"),
        DirConf(path="/home/%u/test_ns"),
        DirConf(path="/dev/shm", tmpfs=True, options=("size=64m",)),
    )
    assert cfg.dir_confs[2].data == ("size=64m",) and cfg.dir_confs[2].flags == ()
    assert cfg.warnings == ()


def test_flags_are_case_insensitive_and_split_from_data(tmp_path):
    p = write(tmp_path, """\
        defaults:
          base_path: /b
          dir_confs:
            - path: /tmp
              tmpfs: true
              options: "NOEXEC,size=1g,,nr_inodes=10k,mode=1777,RO,noswap"
        """)
    c = ld(p).dir_confs[0]
    assert c.options == ("noexec", "size=1g", "nr_inodes=10k", "mode=1777", "ro", "noswap")
    assert c.flags == ("ro", "noexec")
    assert c.data == ("size=1g", "nr_inodes=10k", "mode=1777", "noswap")


def test_dev_shm_is_always_tmpfs(tmp_path):
    p = write(tmp_path, """\
        defaults:
          base_path: /b
          dir_confs:
            - path: /dev/shm
              tmpfs: false
              options: size=1m
        """)
    cfg = ld(p)
    assert cfg.dir_confs[0].tmpfs is True
    assert any("always a fresh tmpfs" in w and ":5:" in w for w in cfg.warnings)


# ------------------------------------------------------------------ merge

MERGE = """\
defaults:
  base_path: /b
  dirs: /tmp,/var/tmp
  dir_confs:
    - path: /tmp
      tmpfs: true
node_confs:
  - nodes: n2
    options:
      dir_confs:
        - path: /scratch
  - nodes: n3
    options:
      dirs: /var/tmp
  - nodes: n4
    options:
      shared: true
"""


def test_node_entry_dir_confs_replaces_defaults_list(tmp_path):
    p = write(tmp_path, MERGE)
    assert ld(p, "n2").dir_confs == (DirConf(path="/scratch"),)
    assert ld(p, "n2").dirs == ("/scratch",)
    # an entry without dir_confs keeps the defaults' list
    assert ld(p, "n4").dir_confs == (DirConf(path="/tmp", tmpfs=True),)
    assert ld(p, "n1").dirs == ("/tmp",)


def test_dirs_beside_dir_confs_is_ignored_with_a_warning(tmp_path):
    p = write(tmp_path, MERGE)
    cfg = ld(p, "n3")                 # Slurm: the defaults' dir_confs still wins
    assert cfg.dirs == ("/tmp",) and cfg.dir_confs[0].tmpfs
    assert any(":14: dirs: dirs is ignored: dir_confs (line 4) takes precedence" in w
               for w in cfg.warnings)
    assert any(":3: dirs: dirs is ignored" in w for w in ld(p, "n1").warnings)


def test_without_dir_confs_nothing_changes(tmp_path):
    cfg = ld(write(tmp_path, "defaults:\n  base_path: /b\n  dirs: /tmp,/dev/shm\n"))
    assert cfg.dir_confs == () and cfg.dirs == ("/tmp", "/dev/shm")


# ------------------------------------------------------------------ errors, with lines

def dc(tmp_path, body):
    """A file whose defaults' dir_confs is `body` (indented list items); line 4 is the
    first item's first key."""
    text = "defaults:\n  base_path: /var/lib/jobns\n  dir_confs:\n" + textwrap.indent(
        textwrap.dedent(body), "    ")
    return write(tmp_path, text)


@pytest.mark.parametrize("body, line, words", [
    ("- path: /var/tmp\n  options: size=1g\n", 5, ("size=1g", "bind mount")),
    ("- path: /var/tmp\n  options: noexec,bogus\n", 5, ("tmpfs mount data",)),
    ("- path: /tmp\n  tmpfs: true\n  options: bogus=1\n", 6, ("unknown option 'bogus=1'",)),
    ("- path: /tmp\n  tmpfs: true\n  options: size=12x\n", 6, ("size=12x is not a valid size",)),
    ("- path: /tmp\n  tmpfs: true\n  options: size=-1\n", 6, ("not a valid size",)),
    ("- path: /tmp\n  tmpfs: true\n  options: size=150%mem\n", 6, ("1 to 100",)),
    ("- path: /tmp\n  tmpfs: true\n  options: nr_blocks=5%\n", 6, ("nr_blocks=5%",)),
    ("- path: /tmp\n  tmpfs: true\n  options: mode=0999\n", 6, ("not an octal mode",)),
    ("- path: /tmp\n  tmpfs: true\n  options: mode=17777\n", 6, ("not an octal mode",)),
    ("- path: /tmp\n  tmpfs: true\n  options: uid=bob\n", 6, ("not a numeric id",)),
    ("- path: /tmp\n  tmpfs: true\n  options: size\n", 6, ("needs a value",)),
    ("- path: /tmp\n  tmpfs: true\n  options: noswap=1\n", 6, ("takes no value",)),
    ("- path: /tmp\n  tmpfs: true\n  options: size=1m,size=2m\n", 6, ("given twice",)),
    ("- path: /tmp\n  tmpfs: true\n  options: 'size=1m, noexec'\n", 6, ("contains spaces",)),
    ("- path: /tmp\n  tmpfs: yes please\n", 5, ("expected true or false",)),
    ("- path: tmp\n", 4, ("not an absolute path",)),
    ("- path: /a/../tmp\n", 4, ("'..' component",)),
    ("- path: /\n", 4, ("whole file system",)),
    ("- path: /tmp/%S\n", 4, ("%S", "SLUID")),
    ("- path: /tmp/%x\n", 4, ("%x is not expanded",)),
    ("- options: noexec\n", 4, ("has no path",)),
    ("- path: 5\n", 4, ("as a number",)),
    ("- /tmp\n", 4, ("must be a mapping",)),
    ("- path: /tmp\n- path: /var/tmp\n- path: /tmp/\n", 6, ("listed twice", "first at line 4")),
    ("- path: /var/lib/jobns\n", 4, ("is the base path",)),
    ("- path: /var/lib/jobns/x\n", 4, ("under the base path",)),
    ("- path: /var\n", 2, ("base path /var/lib/jobns lies under the private dir /var",)),
    ("- path: /var/%u\n", 2, ("may lie under",)),
    ("- path: /scratch\n  base_path: /nvme\n", 5, ("per-directory base_path", "not supported")),
    ("- path: /scratch\n  base_path: nvme\n", 5, ("not an absolute path",)),
    ("- path: /tmp\n- path: /tmp/x\n", 5, ("/tmp/x lies under dir /tmp",)),
])
def test_bad_values_are_reported_with_their_line(tmp_path, body, line, words):
    p = dc(tmp_path, body)
    found = one_finding(p, *words)
    assert f"namespace.yaml:{line}:" in found, found


def test_errors_make_load_fail_and_warnings_do_not(tmp_path):
    with pytest.raises(ConfigError) as exc:
        ld(dc(tmp_path, "- path: /var/tmp\n  options: size=1g\n"))
    assert exc.value.line == 5 and exc.value.key == "options"
    cfg = ld(dc(tmp_path, "- path: /tmp\n  tmpfs: true\n  base_path: /x\n  options: size=0\n"))
    assert any("base_path of /tmp is ignored" in w for w in cfg.warnings)
    assert any("size=0 means no limit" in w for w in cfg.warnings)
    assert cfg.dir_confs == (DirConf(path="/tmp", tmpfs=True, options=("size=0",)),)


@pytest.mark.parametrize("value, words", [
    ("[]", "lists no directory"), ("/tmp", "must be a list"), ("{path: /tmp}", "must be a list"),
])
def test_dir_confs_shape_errors(tmp_path, value, words):
    p = write(tmp_path, f"defaults:\n  base_path: /b\n  dir_confs: {value}\n")
    assert ":3:" in one_finding(p, words)


def test_unknown_key_in_element_is_a_warning_with_a_suggestion(tmp_path):
    p = dc(tmp_path, "- path: /tmp\n  tmpf: true\n")
    found = one_finding(p, "unknown key", "did you mean tmpfs?")
    assert ":5:" in found


def test_per_dir_base_path_equal_to_the_node_base_after_expansion(tmp_path):
    p = write(tmp_path, """\
        defaults:
          base_path: /nvme/%n
          dir_confs:
            - path: /scratch
              base_path: /nvme/%n/
        """)
    cfg = ld(p, "n7")
    assert cfg.dir_confs == (DirConf(path="/scratch", base_path="/nvme/n7"),)


# ------------------------------------------------------------------ show and cache

def test_show_and_json(tmp_path):
    cfg = ld(write(tmp_path, SLURM_TEST))
    text = format_show(cfg)
    assert "dir_confs" in text
    assert "/var/tmp(noexec)[base /var/lib/jobns] /home/%u/test_ns /dev/shm[tmpfs](size=64m)" \
        in text
    d = json.loads(json.dumps(cfg.as_dict()))
    assert d["dirs"] == ["/var/tmp", "/home/%u/test_ns", "/dev/shm"]
    assert d["dir_confs"][2] == {"path": "/dev/shm", "tmpfs": True, "options": "size=64m",
                                 "base_path": None}
    # without dir_confs the table has no dir_confs row
    assert "dir_confs" not in format_show(ld(write(tmp_path, "defaults:\n  base_path: /b\n")))


def test_cache_round_trips_dir_confs(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("JOBNS_RUNTIME_DIR", str(run))
    p = write(tmp_path, SLURM_TEST)
    cfg = load(p, "n1", check_scripts=False)
    f = next((run / "config-cache").iterdir())
    entry = marshal.loads(f.read_bytes())
    assert entry["config"]["dir_confs"][0]["options"] == "noexec"
    # a hit rebuilds the same value (poison origin to prove it came from the cache)
    entry["config"]["origin"] = "cached"
    f.write_bytes(marshal.dumps(entry))
    hit = load(p, "n1", check_scripts=False)
    assert hit.origin == "cached" and hit.dir_confs == cfg.dir_confs and hit.dirs == cfg.dirs
    # a malformed dir_confs entry is a miss, never a wrong answer
    entry["config"]["dir_confs"][0]["tmpfs"] = "yes"
    f.write_bytes(marshal.dumps(entry))
    assert load(p, "n1", check_scripts=False).origin != "cached"


def test_job_start_imports_no_dataclasses(tmp_path):
    p = write(tmp_path, SLURM_TEST)
    code = ("import sys; from jobns.config import load; from jobns.plan import build_plan; "
            "from jobns.job import Job; "
            f"c = load({p!r}, 'n1', use_cache=False, check_scripts=False); "
            "build_plan(c, Job('5', 1000, 1000, 'alice', {'SLURM_JOB_MEM': '64'})); "
            "print('dataclasses' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------ plan

ALICE = Job("42", 1000, 1000, "alice", {"SLURM_JOB_MEM": "64"})


def cfg_of(tmp_path, body):
    return ld(dc(tmp_path, body))


def by_name(plan):
    return {s.name: s for s in plan.steps}


def test_plan_tmpfs_bind_flags_and_expansion(tmp_path):
    cfg = cfg_of(tmp_path, """\
        - path: /tmp
          tmpfs: true
          options: noexec,size=8m
        - path: /scratch/%u/%j
          options: noexec,nosuid
        - path: /var/tmp
          base_path: /var/lib/jobns
        - path: /dev/shm
          options: size=50%mem
        """)
    plan = build_plan(cfg, ALICE)
    s = by_name(plan)
    t = s["tmpfs:/tmp"]
    assert t.kind == "tmpfs" and t.where == "ns" and t.path == "/tmp"
    assert t.args == {"data": "size=8m,mode=0700,uid=1000,gid=0",
                      "flags": ["nosuid", "nodev", "noexec"], "peel": False}
    b = s["bind:/scratch/alice/42"]
    assert b.args == {"source": "/var/lib/jobns/42/.42/_scratch_alice_42",
                      "flags": ["noexec", "nosuid"]}
    assert s["mkdir-dir:/scratch/alice/42"].path == "/var/lib/jobns/42/.42/_scratch_alice_42"
    # a per-dir base_path equal to the node's: <base>/<J>/<mangled>, as Slurm lays it out
    assert s["bind:/var/tmp"].args == {"source": "/var/lib/jobns/42/_var_tmp", "flags": []}
    assert s["mkdir-dir:/var/tmp"].path == "/var/lib/jobns/42/_var_tmp"
    shm = s["tmpfs:/dev/shm"]
    assert shm.args == {"data": "size=32768k,mode=1777", "flags": ["nosuid", "nodev"],
                        "peel": True}
    # no backing dir for a tmpfs, mounts in list order, before hiding the base
    assert "mkdir-dir:/tmp" not in s and "mkdir-dir:/dev/shm" not in s
    ns = [st.name for st in plan.in_namespace()]
    assert ns == ["propagation", "tmpfs:/tmp", "bind:/scratch/alice/42", "bind:/var/tmp",
                  "tmpfs:/dev/shm", "hide-base"]
    text = plan.describe()
    assert "fresh tmpfs nosuid,nodev,noexec size=8m,mode=0700,uid=1000,gid=0" in text
    assert "remount noexec,nosuid" in text


def test_plan_explicit_mode_uid_gid_are_kept(tmp_path):
    cfg = cfg_of(tmp_path, "- path: /tmp\n  tmpfs: true\n  options: mode=1777\n"
                           "- path: /t2\n  tmpfs: true\n  options: uid=5\n")
    s = by_name(build_plan(cfg, ALICE))
    assert s["tmpfs:/tmp"].args["data"] == "mode=1777"
    assert s["tmpfs:/t2"].args["data"] == "uid=5,mode=0700,gid=0"


@pytest.mark.parametrize("mem, expect", [("64", "size=32768k"), ("1", "size=512k"),
                                         ("", "size=50%"), ("0", "size=50%"),
                                         (None, "size=50%")])
def test_plan_size_percent_of_job_memory(tmp_path, mem, expect):
    cfg = cfg_of(tmp_path, "- path: /tmp\n  tmpfs: true\n  options: size=50%mem\n")
    env = {} if mem is None else {"SLURM_JOB_MEM": mem}
    step = by_name(build_plan(cfg, Job("1", 1000, 1000, "alice", env)))["tmpfs:/tmp"]
    assert step.args["data"].split(",")[0] == expect


def test_plan_bad_job_memory_fails_clearly(tmp_path):
    cfg = cfg_of(tmp_path, "- path: /tmp\n  tmpfs: true\n  options: size=50%mem\n")
    with pytest.raises(OperationError) as exc:
        build_plan(cfg, Job("1", 1000, 1000, "alice", {"SLURM_JOB_MEM": "64G"}))
    assert exc.value.step == "tmpfs:/tmp" and "SLURM_JOB_MEM" in str(exc.value)


def test_plan_expansions_that_collide_or_escape_fail(tmp_path):
    cfg = cfg_of(tmp_path, "- path: /scratch/%u\n- path: /scratch/alice\n")
    with pytest.raises(OperationError, match="two dir_confs paths expand to /scratch/alice"):
        build_plan(cfg, ALICE)
    build_plan(cfg, Job("1", 1001, 1001, "bob"))
    cfg = cfg_of(tmp_path, "- path: /var/%u/jobns\n")
    with pytest.raises(OperationError, match="inside base_path"):
        build_plan(cfg, Job("1", 1001, 1001, "lib"))
    cfg = cfg_of(tmp_path, "- path: /x/%u\n")
    with pytest.raises(OperationError, match="unusable path"):
        build_plan(cfg, Job("1", 1001, 1001, ".."))
