"""namespace.yaml reader: schema, merge rules, defaults, node selection, findings."""

import os

import pytest

from jobns.config import check, load
from jobns.errors import ConfigError

from cfghelp import findings, ld, one_finding, write

MAN_PAGE_EXAMPLE = """\
defaults:
  auto_base_path: true
  base_path: "/var/nvme/storage"
  clone_ns_flags:
    - "CLONE_NEWPID"
    - "CLONE_NEWUSER"
    - "CLONE_NEWNS"
  clone_ns_epilog: "/path/to/epilog_script"
  clone_ns_epilog_wait: 10
  clone_ns_script: "/path/to/ns_script"
  init_script: "/path/to/init_script"
  shared: true
node_confs:
  - nodes:
      - "n1"
      - "n[2-4,6]"
    options:
      auto_base_path: true
      base_path: "/var/nvme/storage_1"
      clone_ns_script_wait: 20
      dirs: "/tmp"
      shared: false
      user_ns_script: "/path/to/user_script"
  - nodes:
      - "n[7-10]"
    options:
      auto_base_path: true
      base_path: "/var/nvme/storage_2"
      init_script: "/etc/slurm/init.sh"
"""

ALL_FLAGS = ("CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS")


# ------------------------------------------------------------------ man page example

@pytest.mark.parametrize("node", ["n1", "n3"])
def test_man_page_example_first_entry(tmp_path, node):
    cfg = ld(write(tmp_path, MAN_PAGE_EXAMPLE), node)
    assert cfg.base_path == "/var/nvme/storage_1"
    assert cfg.dirs == ("/tmp",)
    assert cfg.clone_ns_script_wait == 20
    assert cfg.shared is False
    assert cfg.auto_base_path is True
    assert cfg.user_ns_script == "/path/to/user_script"
    # strings inherited from defaults
    assert cfg.init_script == "/path/to/init_script"
    assert cfg.clone_ns_script == "/path/to/ns_script"
    assert cfg.clone_ns_epilog == "/path/to/epilog_script"
    assert cfg.clone_ns_epilog_wait == 10
    assert cfg.clone_ns_flags == ALL_FLAGS
    assert cfg.origin == "node_confs[0] (line 14)"
    # the example's scripts do not exist on this host: said, not refused (another node's view)
    assert all("not on this host" in w for w in cfg.warnings), cfg.warnings


def test_man_page_example_second_entry(tmp_path):
    cfg = ld(write(tmp_path, MAN_PAGE_EXAMPLE), "n8")
    assert cfg.base_path == "/var/nvme/storage_2"
    assert cfg.init_script == "/etc/slurm/init.sh"
    assert cfg.shared is True                      # from defaults, not overridden
    assert cfg.dirs == ("/tmp", "/dev/shm")        # default dirs
    assert cfg.clone_ns_script_wait == 10          # unset -> 10
    assert cfg.user_ns_script is None
    assert cfg.origin == "node_confs[1] (line 24)"


def test_man_page_example_defaults(tmp_path):
    cfg = ld(write(tmp_path, MAN_PAGE_EXAMPLE), "n5")
    assert cfg.base_path == "/var/nvme/storage"
    assert cfg.shared is True
    assert cfg.clone_ns_flags == ALL_FLAGS
    assert cfg.origin == "defaults (line 1)"
    assert cfg.source.endswith("namespace.yaml")


def test_man_page_example_check_reports_only_missing_scripts(tmp_path):
    found = check(write(tmp_path, MAN_PAGE_EXAMPLE))
    assert found and all("cannot use script" in e.message for e in found)
    assert {e.line for e in found} == {8, 10, 11, 23, 29}


def test_man_page_example_scripts_checked_only_for_this_node(tmp_path):
    text = MAN_PAGE_EXAMPLE.replace("/path/to/", str(tmp_path) + "/").replace(
        "/etc/slurm/init.sh", str(tmp_path / "init.sh"))
    path = write(tmp_path, text)
    for name in ("epilog_script", "ns_script", "init_script", "user_script"):
        s = tmp_path / name
        s.write_text("#!/bin/sh\n")
        s.chmod(0o755)
    assert ld(path, "n1", check_scripts=True).user_ns_script.endswith("user_script")
    with pytest.raises(ConfigError) as ei:
        ld(path, "n8", check_scripts=True)        # init.sh is missing
    assert ei.value.line == 29 and ei.value.key == "init_script"
    (tmp_path / "init.sh").write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not executable"):
        ld(path, "n8", check_scripts=True)


# ------------------------------------------------------------------ defaults and merge

def test_builtin_values_for_a_minimal_file(tmp_path):
    cfg = ld(write(tmp_path, "defaults:\n  base_path: /var/ns\n"))
    assert (cfg.base_path, cfg.auto_base_path, cfg.shared, cfg.disable_bpf_token) == \
        ("/var/ns", False, False, False)
    assert cfg.dirs == ("/tmp", "/dev/shm")
    assert cfg.clone_ns_flags == ("CLONE_NEWNS",)
    assert (cfg.clone_ns_script_wait, cfg.clone_ns_epilog_wait) == (10, 10)
    assert cfg.init_script is None and cfg.clone_ns_script is None
    assert cfg.entire_step_in_ns is False


@pytest.mark.parametrize("text", [
    "", "# only a comment\n", "{}\n",
])
def test_neither_defaults_nor_node_confs_disables(tmp_path, text):
    cfg = ld(write(tmp_path, text))
    assert cfg.base_path is None and not cfg.enabled
    assert findings(write(tmp_path, text))  # reported by check


def test_no_base_path_disables(tmp_path):
    cfg = ld(write(tmp_path, "defaults:\n  shared: true\n"))
    assert not cfg.enabled


@pytest.mark.parametrize("value", ["none", "None", "NONE", "nOnE"])
def test_base_path_none_disables(tmp_path, value):
    path = write(tmp_path, f"""\
        defaults:
          base_path: /var/ns
        node_confs:
          - nodes: n1
            options:
              base_path: {value}
        """)
    assert ld(path, "n1").base_path is None
    assert ld(path, "n2").base_path == "/var/ns"


def test_base_path_starting_with_none_disables_with_warning(tmp_path):
    path = write(tmp_path, "defaults:\n  base_path: nonexistent\n")
    cfg = ld(path)
    assert cfg.base_path is None
    assert any("starts with 'none'" in w for w in cfg.warnings)


@pytest.mark.parametrize("key,dval,nval,expected", [
    # booleans: a node entry overrides only when the key is present
    ("shared", "true", None, True),
    ("shared", "true", "false", False),
    ("shared", None, "true", True),
    ("auto_base_path", "true", "false", False),
    ("disable_bpf_token", "true", None, True),
    ("disable_bpf_token", "false", "true", True),
    # ints: override only when present; 0 means the default of 10
    ("clone_ns_script_wait", "30", None, 30),
    ("clone_ns_script_wait", "30", "5", 5),
    ("clone_ns_script_wait", "30", "0", 10),
    ("clone_ns_epilog_wait", "0", None, 10),
    ("clone_ns_epilog_wait", None, "7", 7),
    # strings: override only when non-empty
    ("init_script", "/a", None, "/a"),
    ("init_script", "/a", '""', "/a"),
    ("init_script", "/a", "/b", "/b"),
    ("clone_ns_epilog", None, "/e", "/e"),
    ("user_ns_script", "/u", "~", "/u"),
    ("dirs", "/tmp", '""', ("/tmp",)),
    ("dirs", "/tmp", "/var/tmp", ("/var/tmp",)),
    ("clone_ns_flags", "CLONE_NEWPID", "CLONE_NEWUSER", ("CLONE_NEWUSER", "CLONE_NEWNS")),
    ("clone_ns_flags", "CLONE_NEWPID", '""', ("CLONE_NEWPID", "CLONE_NEWNS")),
    ("base_path", "/var/a", '""', "/var/a"),
])
def test_merge_rules(tmp_path, key, dval, nval, expected):
    dlines = "  base_path: /var/ns\n" if key != "base_path" else ""
    if dval is not None:
        dlines += f"  {key}: {dval}\n"
    olines = f"      {key}: {nval}\n" if nval is not None else "      {}\n"
    if nval is None:
        text = f"defaults:\n{dlines}node_confs:\n  - nodes: n1\n    options: {{}}\n"
    else:
        text = f"defaults:\n{dlines}node_confs:\n  - nodes: n1\n    options:\n{olines}"
    cfg = ld(write(tmp_path, text))
    assert getattr(cfg, key) == expected
    assert cfg.origin.startswith("node_confs[0]")


def test_first_matching_entry_wins(tmp_path):
    path = write(tmp_path, """\
        node_confs:
          - nodes: ["n[1-5]"]
            options: {base_path: /var/first}
          - nodes: n3
            options: {base_path: /var/second}
        """)
    assert ld(path, "n3").base_path == "/var/first"
    assert ld(path, "n3").origin == "node_confs[0] (line 2)"


def test_node_confs_without_defaults_and_no_match_is_disabled(tmp_path):
    path = write(tmp_path, "node_confs:\n  - nodes: n1\n    options: {base_path: /var/a}\n")
    cfg = ld(path, "zz9")
    assert not cfg.enabled and "no node_confs entry matches" in cfg.origin


def test_nodes_match_node_name_not_hostname(tmp_path):
    path = write(tmp_path, "node_confs:\n  - nodes: n1\n    options: {base_path: /var/a}\n")
    assert ld(path, "n1", hostname="other").enabled
    assert not ld(path, "host1", hostname="n1").enabled


@pytest.mark.parametrize("nodes,member,non_member", [
    ('"n[2-4,6]"', "n6", "n5"),
    ('["n1", "n[2-4,6]"]', "n4", "n7"),
    ("\n      - n1\n      - n[01-10]", "n09", "n9"),
    ('"rack[1-2]-n[1-3]"', "rack2-n3", "rack3-n1"),
    ('"n[1-100000]"', "n100000", "n100001"),
    ('"n[1-3],m5"', "m5", "m4"),
])
def test_nodes_forms(tmp_path, nodes, member, non_member):
    path = write(tmp_path, f"node_confs:\n  - nodes: {nodes}\n    options:\n      base_path: /var/a\n")
    assert ld(path, member).enabled
    assert not ld(path, non_member).enabled


def test_percent_substitution_first_occurrence_only(tmp_path):
    path = write(tmp_path, "defaults:\n  base_path: /var/%h/%n/%h/%n\n")
    assert ld(path, "n7", hostname="hostA").base_path == "/var/hostA/n7/%h/%n"


def test_percent_h_defaults_to_short_hostname(tmp_path, monkeypatch):
    real = os.uname()
    fake = os.uname_result((real.sysname, "cn01.cluster.example", real.release, real.version,
                            real.machine))
    monkeypatch.setattr(os, "uname", lambda: fake)
    path = write(tmp_path, "defaults:\n  base_path: /var/%h\n")
    assert load(path, "n1", use_cache=False).base_path == "/var/cn01"


@pytest.mark.parametrize("value,expected", [
    ('"CLONE_NEWPID,CLONE_NEWUSER"', ("CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS")),
    ('"clone_newuser , Clone_NewPid"', ("CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS")),
    ("[CLONE_NEWNS]", ("CLONE_NEWNS",)),
    ("[clone_newuser]", ("CLONE_NEWUSER", "CLONE_NEWNS")),
    ("[]", ("CLONE_NEWNS",)),
    ('"CLONE_NEWUSER,CLONE_NEWNET"', ("CLONE_NEWUSER", "CLONE_NEWNS")),
])
def test_clone_ns_flags_forms(tmp_path, value, expected):
    path = write(tmp_path, f"defaults:\n  base_path: /var/a\n  clone_ns_flags: {value}\n")
    cfg = ld(path)
    assert cfg.clone_ns_flags == expected
    assert cfg.new_user == ("CLONE_NEWUSER" in expected)


def test_unknown_clone_flag_is_a_warning_at_load_and_a_finding(tmp_path):
    path = write(tmp_path, 'defaults:\n  base_path: /var/a\n  clone_ns_flags: "CLONE_NEWNET"\n')
    cfg = ld(path)
    assert any("CLONE_NEWNET" in w for w in cfg.warnings)
    assert "3: clone_ns_flags: unknown clone flag 'CLONE_NEWNET'" in one_finding(path, "NEWNET")


@pytest.mark.parametrize("value,expected", [
    ('"/tmp,/var/tmp"', ("/tmp", "/var/tmp")),
    ('"/tmp,,/var/tmp,"', ("/tmp", "/var/tmp")),
    ("[/tmp, /var/tmp, /dev/shm]", ("/tmp", "/var/tmp", "/dev/shm")),
    ('"/dev/shm"', ("/dev/shm",)),
])
def test_dirs_forms(tmp_path, value, expected):
    path = write(tmp_path, f"defaults:\n  base_path: /var/a\n  dirs: {value}\n")
    assert ld(path).dirs == expected


# ------------------------------------------------------------------ findings

BAD = [
    # (yaml, line, key, words in the message)
    ("defaults:\n  base_path: /var/a\n  shared: maybe\n", 3, "shared", "true or false"),
    ('defaults:\n  base_path: /var/a\n  shared: "yes"\n', 3, "shared", "true or false"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_script_wait: ten\n", 3,
     "clone_ns_script_wait", "whole number"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_script_wait: -1\n", 3,
     "clone_ns_script_wait", "negative"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_epilog_wait: 1.5\n", 3,
     "clone_ns_epilog_wait", "whole number"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_epilog_wait: 010\n", 3,
     "clone_ns_epilog_wait", "octal 8"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_epilog_wait: 0x10\n", 3,
     "clone_ns_epilog_wait", "whole number"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_epilog_wait: true\n", 3,
     "clone_ns_epilog_wait", "boolean"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_epilog_wait: 99999999999\n", 3,
     "clone_ns_epilog_wait", "too large"),
    ("defaults:\n  base_path: yes\n", 2, "base_path", "boolean"),
    ("defaults:\n  base_path: /var/a\n  dirs: on\n", 3, "dirs", "boolean"),
    ("defaults:\n  base_path: 010\n", 2, "base_path", "number"),
    ("defaults:\n  base_path: [/a]\n", 2, "base_path", "expected a string"),
    ("defaults:\n  base_path: var/ns\n", 2, "base_path", "not an absolute path"),
    ("defaults:\n  base_path: /var/../ns\n", 2, "base_path", "'..'"),
    ('defaults:\n  base_path: " /var/ns"\n', 2, "base_path", "whitespace"),
    ("defaults:\n  base_path: /var/a\n  init_script: init.sh\n", 3, "init_script",
     "not an absolute path"),
    ("defaults:\n  base_path: /var/a\n  clone_ns_script: ./x\n", 3, "clone_ns_script",
     "not an absolute path"),
    ("defaults:\n  base_path: /var/a\n  dirs: tmp\n", 3, "dirs", "not an absolute path"),
    ('defaults:\n  base_path: /var/a\n  dirs: "/tmp, /var/tmp"\n', 3, "dirs", "spaces"),
    ('defaults:\n  base_path: /var/a\n  dirs: "/tmp,/tmp"\n', 3, "dirs", "twice"),
    ('defaults:\n  base_path: /var/a\n  dirs: "/tmp,/var/../tmp"\n', 3, "dirs", "'..'"),
    ('defaults:\n  base_path: /var/a\n  dirs: "/"\n', 3, "dirs", "whole file system"),
    ('defaults:\n  base_path: /var/a\n  dirs: ","\n', 3, "dirs", "no directory"),
    ('defaults:\n  base_path: /var/a\n  dirs: ["/tmp,/var/tmp"]\n', 3, "dirs", "one directory"),
    # base_path and dirs
    ('defaults:\n  base_path: /tmp\n  dirs: "/tmp"\n', 3, "dirs", "is the base path"),
    ('defaults:\n  base_path: /scratch\n  dirs: "/scratch/x,/tmp"\n', 3, "dirs",
     "under the base path"),
    ('defaults:\n  base_path: /tmp/ns\n  dirs: "/tmp"\n', 2, "base_path",
     "lies under the private dir /tmp"),
    ("defaults:\n  base_path: /dev/shm/ns\n", 2, "base_path", "default dirs"),
    # structure
    ("defaults:\n  base_path: /a\n  base_path: /b\n", 3, "base_path", "duplicate key"),
    ("defaults:\n  base_path: /a\n  base_pth: /b\n", 3, "base_pth", "did you mean base_path"),
    ("disable_bpf_token: true\ndefaults:\n  base_path: /a\n", 1, "disable_bpf_token",
     "silently ignored by Slurm"),
    ("base_path: /a\n", 1, "base_path", "top level"),
    ("node_confs:\n  - nodes: n1\n", 2, "options", "has no options"),
    ("node_confs:\n  - options: {base_path: /a}\n", 2, "nodes", "has no nodes"),
    ("node_confs:\n  - nodes: 'n[5-3]'\n    options: {base_path: /a}\n", 2, "nodes",
     "not a valid hostlist"),
    ("node_confs:\n  - nodes: 'n[1-3]!n2'\n    options: {base_path: /a}\n", 2, "nodes",
     "exclusion"),
    ("node_confs:\n  - nodes: [n1, 5]\n    options: {base_path: /a}\n", 2, "nodes", "quote"),
    ("node_confs:\n  - nodes: n1\n    base_path: /a\n    options: {}\n", 3, "base_path",
     "inside node_confs[0].options"),
    ("node_confs:\n  - nodes: n1\n    options:\n      nodes: n2\n", 4, "nodes",
     "does not belong"),
    ("node_confs: {nodes: n1}\n", 1, "node_confs", "must be a list"),
    ("defaults: /var/a\n", 1, None, "must be a mapping"),
    ("- a\n- b\n", 1, None, "top level must be a mapping"),
    ('node_confs:\n  - nodes: [n1, n[2-4,6]]\n    options: {}\n', 2, None, "YAML syntax error"),
    ("defaults:\n\tbase_path: /a\n", 2, None, "YAML syntax error"),
    ("a: 1\n---\nb: 2\n", 2, None, "YAML"),
    ("defaults:\n  <<: {base_path: /a}\n", 2, "<<", "merge keys"),
    ("defaults:\n  base_path: !!binary aGVsbG8=\n", 2, "base_path", "expected a string"),
    ("defaults:\n  base_path: /var/%j\n", 2, "base_path", "%j"),
    ("defaults:\n  base_path: /var/a\n  user_ns_script: /u\n", 3, "user_ns_script",
     "CLONE_NEWUSER"),
    ('defaults:\n  base_path: ""\n', 2, "base_path", "empty base_path is ignored"),
    ("node_confs:\n  - nodes: []\n    options: {base_path: /a}\n", 2, "nodes", "matches no node"),
    ('node_confs:\n  - nodes: "n[1-70000]"\n    options: {base_path: /a}\n', 2, "nodes",
     "Slurm refuses ranges"),
]


@pytest.mark.parametrize("text,line,key,words", BAD)
def test_findings_name_file_line_key_and_message(tmp_path, text, line, key, words):
    path = write(tmp_path, text)
    errs = [e for e in check(path) if words in str(e)]
    assert errs, f"{words!r} not in {[str(e) for e in check(path)]}"
    e = errs[0]
    assert e.file == path and e.line == line and e.key == key
    assert str(e).startswith(f"{path}:{line}: ")


ERRORS_AT_LOAD = [t for t in BAD if t[3] not in (
    "duplicate key", "did you mean base_path", "silently ignored by Slurm", "top level",
    "%j", "CLONE_NEWUSER", "empty base_path is ignored", "matches no node",
    "Slurm refuses ranges")]


@pytest.mark.parametrize("text,line,key,words", ERRORS_AT_LOAD)
def test_errors_make_load_fail_with_a_located_config_error(tmp_path, text, line, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        ld(path, "n1")
    assert ei.value.file == path and ei.value.line is not None


@pytest.mark.parametrize("text,expected", [
    ("defaults:\n  base_path: /a\n  base_path: /b\n", "/b"),            # last value wins
    ("disable_bpf_token: true\ndefaults:\n  base_path: /a\n", "/a"),
])
def test_warnings_do_not_stop_load(tmp_path, text, expected):
    cfg = ld(write(tmp_path, text))
    assert cfg.base_path == expected and cfg.warnings


def test_top_level_disable_bpf_token_is_applied_as_a_default(tmp_path):
    path = write(tmp_path, """\
        disable_bpf_token: true
        defaults:
          base_path: /a
        node_confs:
          - nodes: n2
            options: {disable_bpf_token: false}
        """)
    assert ld(path, "n1").disable_bpf_token is True
    assert ld(path, "n2").disable_bpf_token is False


def test_yaml_11_booleans_are_fine_where_booleans_are_expected(tmp_path):
    path = write(tmp_path, "defaults:\n  base_path: /a\n  shared: yes\n  auto_base_path: On\n")
    cfg = ld(path)
    assert cfg.shared and cfg.auto_base_path
    assert check(path) == []


def test_quoted_number_is_accepted_for_a_wait(tmp_path):
    path = write(tmp_path, 'defaults:\n  base_path: /a\n  clone_ns_script_wait: "25"\n')
    assert ld(path).clone_ns_script_wait == 25


def test_error_in_an_entry_for_other_nodes_still_fails_load(tmp_path):
    path = write(tmp_path, """\
        defaults:
          base_path: /a
        node_confs:
          - nodes: n9
            options: {shared: perhaps}
        """)
    with pytest.raises(ConfigError, match="true or false"):
        ld(path, "n1")


def test_relation_error_only_for_the_affected_node_at_load(tmp_path):
    path = write(tmp_path, """\
        defaults:
          base_path: /var/a
        node_confs:
          - nodes: n9
            options: {base_path: /tmp/x}
        """)
    assert ld(path, "n1").base_path == "/var/a"
    with pytest.raises(ConfigError, match="lies under the private dir /tmp"):
        ld(path, "n9")
    assert any("line 5" in f or ":5:" in f for f in findings(path))


def test_check_with_node_checks_that_nodes_expansion(tmp_path):
    path = write(tmp_path, "defaults:\n  base_path: /var/%n\n  dirs: /var/n1\n")
    assert check(path) == []
    assert "is the base path /var/n1" in one_finding(path, "base path", node="n1")


def test_load_raises_first_error_and_counts_the_rest(tmp_path):
    path = write(tmp_path, "defaults:\n  base_path: rel\n  shared: maybe\n  dirs: x\n")
    with pytest.raises(ConfigError) as ei:
        ld(path)
    assert "2 more problems" in str(ei.value) and "jobns config check" in str(ei.value)


def test_anchors_and_aliases_work(tmp_path):
    path = write(tmp_path, """\
        defaults: &d
          base_path: /var/a
          shared: true
        node_confs:
          - nodes: n1
            options: *d
        """)
    assert ld(path).shared is True


def test_alias_bomb_is_not_expanded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    lines.append("defaults:\n  base_path: /var/a\n  dirs: *a8")
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError):
        ld(path)


@pytest.mark.parametrize("text,line,key,hint", [
    ("defaults:\n  base_pth: /a\n", 2, "base_pth", "did you mean base_path?"),
    ("default:\n  base_path: /a\n", 1, "default", "did you mean defaults?"),
    ("defaults:\n  base_path: /a\nnode_confs:\n  - nodes: n1\n    options:\n"
     "      auto_base_pth: false\n", 6, "auto_base_pth", "did you mean auto_base_path?"),
])
def test_unknown_key_is_an_error_that_stops_load(tmp_path, text, line, key, hint):
    """A misspelt key must never leave the node without its base_path (jobs would then
    run without a namespace): load refuses, naming file, line, key and the fix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        ld(path)
    assert (err.value.line, err.value.key) == (line, key)
    assert hint in str(err.value) and str(err.value).startswith(f"{path}:{line}: {key}: ")


def test_check_finds_a_missing_base_path_without_auto_base_path(tmp_path):
    import tempfile
    top = tempfile.mkdtemp(prefix="jobns-check-", dir="/var/tmp")   # not under /tmp
    missing = os.path.join(top, "no-such-base")
    try:
        path = write(tmp_path, f"defaults:\n  base_path: {missing}\n  auto_base_path: false\n")
        found = [f for f in check(path) if f.key == "base_path"]
        assert len(found) == 1 and "does not exist" in str(found[0]) and found[0].line == 2
        os.mkdir(missing)
        assert [f for f in check(path) if f.key == "base_path"] == []
    finally:
        import shutil
        shutil.rmtree(top)


@pytest.mark.parametrize("base,flagged", [("/shared/jobns", True), ("/shared/jobns/%n", False),
                                          ("/shared/%h/jobns", False)])
def test_check_flags_a_network_base_path_without_the_node_name(tmp_path, monkeypatch, base,
                                                               flagged):
    from jobns.config import _common
    monkeypatch.setattr(_common, "fs_type", lambda p: "nfs4")
    path = write(tmp_path, f"defaults:\n  base_path: {base}\n")
    found = [f for f in findings(path) if "nfs4" in str(f)]
    assert bool(found) == flagged, found


def test_source_is_an_absolute_path(tmp_path, monkeypatch):
    write(tmp_path, "defaults:\n  base_path: /var/lib/x\n")
    monkeypatch.chdir(tmp_path)
    cfg = load("namespace.yaml", "n1", use_cache=False)
    assert cfg.source == str(tmp_path / "namespace.yaml")
