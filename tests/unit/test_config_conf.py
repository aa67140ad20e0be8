"""job_container.conf reader: syntax, last-line-wins, precedence, keys across versions."""

import pytest

from jobns.config import check, explain
from jobns.config.conf_reader import logical_lines, split_pairs
from jobns.errors import ConfigError

import cfghelp
from cfghelp import findings, ld


def write(tmp_path, text, name="job_container.conf"):
    return cfghelp.write(tmp_path, text, name)


# ------------------------------------------------------------------ syntax

@pytest.mark.parametrize("text,expected", [
    ("a=1 # c\n", [(1, "a=1 ")]),
    ("a=1 \\# not a comment\n", [(1, "a=1 # not a comment")]),
    ("a=1 \\\\# comment after a literal backslash\n", [(1, "a=1 \\")]),
    ("a=1 \\\nb=2\n", [(1, "a=1 b=2")]),
    ("a=1 \\   \n  b=2\nc=3\n", [(1, "a=1   b=2"), (3, "c=3")]),
    ("a=1\r\nb=2\r\n", [(1, "a=1"), (2, "b=2")]),
    ("x=\\\\\\\n  y\n", [(1, "x=\\  y")]),
])
def test_logical_lines(text, expected):
    assert [(n, l) for n, l in logical_lines(text) if l.strip()] == expected


@pytest.mark.parametrize("line,pairs", [
    ("BasePath=/a Dirs=/tmp", [("BasePath", "/a", ""), ("Dirs", "/tmp", "")]),
    ('BasePath="/a b"  Shared = yes', [("BasePath", "/a b", ""), ("Shared", "yes", "")]),
    ("  InitScript=", [("InitScript", "", "")]),
    ("Dirs+=/x", [("Dirs", "/x", "+")]),
    ('BasePath="/a', [("BasePath", '"/a', "")]),
])
def test_split_pairs(line, pairs):
    assert split_pairs(line) == pairs


def test_split_pairs_rejects_junk():
    with pytest.raises(ValueError):
        split_pairs("BasePath=/a junk")


# ------------------------------------------------------------------ semantics

def test_full_example(tmp_path):
    path = write(tmp_path, """\
        # job_container.conf
        AutoBasePath=true
        Dirs=/tmp,/var/tmp
        Shared=yes
        EntireStepInNS=yes
        CloneNSScript_Wait=30
        CloneNSEpilog_Wait=5
        NodeName=n[1-4] BasePath=/var/nvme/%n InitScript=/etc/slurm/init.sh \\
            CloneNSScript=/etc/slurm/clone.sh CloneNSEpilog=/etc/slurm/epi.sh
        NodeName=n4 BasePath=none
        """)
    cfg = ld(path, "n2")
    assert cfg.base_path == "/var/nvme/n2"
    assert cfg.auto_base_path and cfg.shared and cfg.entire_step_in_ns
    assert cfg.dirs == ("/tmp", "/var/tmp")
    assert cfg.init_script == "/etc/slurm/init.sh"
    assert cfg.clone_ns_script == "/etc/slurm/clone.sh"
    assert cfg.clone_ns_epilog == "/etc/slurm/epi.sh"
    assert (cfg.clone_ns_script_wait, cfg.clone_ns_epilog_wait) == (30, 5)
    assert cfg.clone_ns_flags == ("CLONE_NEWNS",)
    assert cfg.origin == "line 8"
    assert not ld(path, "n4").enabled          # last applicable line wins
    assert ld(path, "n4").origin == "line 10"
    assert not ld(path, "n9").enabled          # no applicable line: disabled
    assert "no line applies" in ld(path, "n9").origin


def test_defaults_of_a_minimal_file(tmp_path):
    cfg = ld(write(tmp_path, "BasePath=/var/ns\n"))
    assert (cfg.base_path, cfg.auto_base_path, cfg.shared, cfg.entire_step_in_ns) == \
        ("/var/ns", False, False, False)
    assert cfg.dirs == ("/tmp", "/dev/shm")
    assert (cfg.clone_ns_script_wait, cfg.clone_ns_epilog_wait) == (10, 10)


def test_keys_are_case_insensitive(tmp_path):
    cfg = ld(write(tmp_path, "basepath=/var/ns SHARED=Yes dirs=/tmp\nautobasepath=TRUE\n"))
    assert cfg.shared and cfg.auto_base_path and cfg.dirs == ("/tmp",)


@pytest.mark.parametrize("word,value", [
    ("yes", True), ("Up", True), ("TRUE", True), ("1", True),
    ("no", False), ("down", False), ("False", False), ("0", False),
])
def test_slurm_boolean_words(tmp_path, word, value):
    assert ld(write(tmp_path, f"BasePath=/a Shared={word}\n")).shared is value


@pytest.mark.parametrize("text,field,expected", [
    # per-line beats global, whatever the order
    ("Shared=yes\nBasePath=/a Shared=no\n", "shared", False),
    ("BasePath=/a Shared=no\nShared=yes\n", "shared", False),
    ("BasePath=/a\nShared=yes\n", "shared", True),
    ("AutoBasePath=no\nBasePath=/a AutoBasePath=yes\n", "auto_base_path", True),
    ("EntireStepInNS=yes\nBasePath=/a EntireStepInNS=no\n", "entire_step_in_ns", False),
    ("CloneNSScript_Wait=30\nBasePath=/a CloneNSScript_Wait=3\n", "clone_ns_script_wait", 3),
    ("CloneNSEpilog_Wait=30\nBasePath=/a\n", "clone_ns_epilog_wait", 30),
    # Dirs: per line, then global, then default
    ("Dirs=/var/tmp\nBasePath=/a Dirs=/tmp\n", "dirs", ("/tmp",)),
    ("Dirs=/var/tmp\nBasePath=/a\n", "dirs", ("/var/tmp",)),
    ("BasePath=/a\n", "dirs", ("/tmp", "/dev/shm")),
    # last applicable line wins; a later line keeps what it does not set
    ("BasePath=/a InitScript=/i\nBasePath=/b\n", "base_path", "/b"),
    ("BasePath=/a InitScript=/i\nBasePath=/b\n", "init_script", "/i"),
    ("NodeName=n1 BasePath=/a\nNodeName=n2 BasePath=/b\n", "base_path", "/a"),
    ("BasePath=/a\nNodeName=n[0-9] BasePath=/b\n", "base_path", "/b"),
    ("NodeName=n[0-9] BasePath=/b\nBasePath=/a\n", "base_path", "/a"),
    # waits: 0 / UNLIMITED mean 'no limit' to Slurm; jobns uses the default
    ("BasePath=/a CloneNSScript_Wait=0\n", "clone_ns_script_wait", 10),
    ("BasePath=/a CloneNSEpilog_Wait=UNLIMITED\n", "clone_ns_epilog_wait", 10),
    # quoting and %h/%n
    ('BasePath="/var/ns dir"\n', "base_path", "/var/ns dir"),
    ("BasePath=/var/%h/%n\n", "base_path", "/var/host1/n1"),
    ("BasePath=/var/%n/%n\n", "base_path", "/var/n1/%n"),
])
def test_precedence_and_values(tmp_path, text, field, expected):
    assert getattr(ld(write(tmp_path, text)), field) == expected


def test_global_clone_ns_script_is_applied_and_warned(tmp_path):
    path = write(tmp_path, "CloneNSScript=/c\nCloneNSEpilog=/e\nBasePath=/a\n")
    cfg = ld(path)
    assert cfg.clone_ns_script == "/c" and cfg.clone_ns_epilog == "/e"
    assert sum("silently ignores" in w for w in cfg.warnings) == 2


def test_line_value_beats_global_clone_ns_script(tmp_path):
    cfg = ld(write(tmp_path, "CloneNSScript=/c\nBasePath=/a CloneNSScript=/line\n"))
    assert cfg.clone_ns_script == "/line"


def test_global_init_script_is_applied_and_warned(tmp_path):
    path = write(tmp_path, "InitScript=/i\nBasePath=/a\n")
    cfg = ld(path)
    assert cfg.init_script == "/i"
    assert any("refuses to start" in w for w in cfg.warnings)
    assert any(":1: InitScript:" in f for f in findings(path))


def test_explain_lists_every_applicable_line(tmp_path):
    path = write(tmp_path, "BasePath=/a\nNodeName=n1 BasePath=/b\nNodeName=n2 BasePath=/c\n")
    text = explain(path, "n1")
    assert "applies: line 2" in text and "lines 1, 2 all apply" in text
    assert "/b" in text


# ------------------------------------------------------------------ findings

BAD = [
    ("NodeName=n1 Dirs=/tmp\n", 1, "BasePath", "needs a BasePath", True),
    ("NodeName=n[5-3] BasePath=/a\n", 1, "NodeName", "not a valid hostlist", True),
    ("NodeName=n@1 BasePath=/a\n", 1, "NodeName", "not a valid hostlist", True),
    ("BasePath=/a NodeName=n1\n", 1, "NodeName", "first key", True),
    ("Shared=yes BasePath=/a\n", 1, "BasePath", "first key", True),
    ("BasePath=\n", 1, "BasePath", "empty BasePath", True),
    ("BasePath=var/ns\n", 1, "BasePath", "not an absolute path", True),
    ("BasePath=/a Shared=maybe\n", 1, "Shared", "not a boolean", True),
    ("BasePath=/a CloneNSScript_Wait=-1\n", 1, "CloneNSScript_Wait", "whole number", True),
    ("BasePath=/a CloneNSScript_Wait=1.5\n", 1, "CloneNSScript_Wait", "whole number", True),
    ("BasePath=/a CloneNSEpilog_Wait=99999999999\n", 1, "CloneNSEpilog_Wait", "too large", True),
    ("BasePath=/a InitScript=init.sh\n", 1, "InitScript", "not an absolute path", True),
    ("BasePath=/a Dirs=/tmp,tmp2\n", 1, "Dirs", "not an absolute path", True),
    ('BasePath=/a Dirs="/tmp, /var/tmp"\n', 1, "Dirs", "spaces", True),
    ("BasePath=/a Dirs=/tmp,/tmp\n", 1, "Dirs", "twice", True),
    ("BasePath=/a Dirs=/tmp,/x/../y\n", 1, "Dirs", "'..'", True),
    ("BasePath=/tmp Dirs=/tmp\n", 1, "Dirs", "is the base path", True),
    ("BasePath=/tmp/jobs Dirs=/tmp\n", 1, "BasePath", "lies under the private dir", True),
    ("BasePath=/dev/shm/jobs\n", 1, "BasePath", "default dirs", True),
    ("BasePath=/a Dirs+=/tmp\n", 1, "Dirs", "operator", True),
    ("BasePath=/a junk\n", 1, None, "expected Key=Value", True),
    ("Include /etc/slurm/other.conf\n", 1, "Include", "not supported", True),
    # an unknown key is an error: a misspelt BasePath must not leave a node unisolated
    ("BasePath=/a\nFoo=bar\n", 2, "Foo", "unknown key", True),
    ("BasePath=/a\nbasepth=/b\n", 2, "basepth", "did you mean BasePath", True),
    ("NodeName=n1 BasPath=/a\n", 1, "BasPath", "did you mean BasePath", True),
    # warnings
    ("BasePath=/a Shared=yes Shared=no\n", 1, "Shared", "twice", False),
    ("Shared=yes\nShared=no\nBasePath=/a\n", 2, "Shared", "set again", False),
    ("InitScript=/i\nBasePath=/a\n", 1, "InitScript", "refuses to start", False),
    ("CloneNSEpilog=/e\nBasePath=/a\n", 1, "CloneNSEpilog", "silently ignores", False),
    ("BasePath=/a CloneNSScript_Wait=0\n", 1, "CloneNSScript_Wait", "no time limit", False),
    ("BasePath=/a Dirs=/var//tmp\n", 1, "Dirs", "normal form", False),
    ("BasePath=nonesuch\n", 1, "BasePath", "starts with 'none'", False),
    ("NodeName=n[1-70000] BasePath=/a\n", 1, "NodeName", "Slurm refuses ranges", False),
]


@pytest.mark.parametrize("text,line,key,words,is_error", BAD)
def test_findings(tmp_path, text, line, key, words, is_error):
    path = write(tmp_path, text)
    found = [e for e in check(path) if words is None or words in str(e)]
    assert found, [str(e) for e in check(path)]
    e = found[0]
    assert (e.file, e.line, e.key) == (path, line, key)
    if is_error:
        with pytest.raises(ConfigError):
            ld(path, "n1")
    else:
        ld(path, "n1")  # a warning never stops a load


def test_dirs_are_kept_as_written(tmp_path):
    path = write(tmp_path, "BasePath=/a Dirs=/var/./tmp,/tmp/\n")
    cfg = ld(path)
    assert cfg.dirs == ("/var/./tmp", "/tmp/")
    assert [w for w in cfg.warnings if "normal form" in w and "/var/tmp" in w]


def test_clean_file_has_no_findings(tmp_path, monkeypatch):
    script = tmp_path / "init.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    path = write(tmp_path, f"""\
        AutoBasePath=true
        NodeName=n[1-9] BasePath=/var/nvme/%n InitScript={script} Dirs=/tmp,/var/tmp
        """)
    assert check(path) == []
    assert check(path, "n1") == []


def test_missing_script_fails_only_the_node_using_it(tmp_path):
    path = write(tmp_path, f"BasePath=/a\nNodeName=n2 BasePath=/b InitScript={tmp_path}/nope\n")
    assert ld(path, "n1", check_scripts=True).base_path == "/a"
    with pytest.raises(ConfigError, match="No such file") as ei:
        ld(path, "n2", check_scripts=True)
    assert (ei.value.line, ei.value.key) == (2, "InitScript")
