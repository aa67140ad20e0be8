"""Arbitrary input never raises anything but ConfigError, from any reader."""

import string

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from jobns.config import check, load
from jobns.config import yaml_reader
from jobns.errors import ConfigError

FUZZ = settings(max_examples=int(__import__("os").environ.get("JOBNS_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(path):
    """load and check must either succeed or raise ConfigError."""
    for node in ("n1", "gpu007"):
        try:
            cfg = load(path, node, use_cache=False, check_scripts=False, hostname="h")
        except ConfigError:
            pass
        else:
            assert cfg.node_name == node
            assert cfg.clone_ns_flags[-1] == "CLONE_NEWNS"
            assert all(isinstance(d, str) for d in cfg.dirs)
            assert cfg.clone_ns_script_wait >= 1 and cfg.clone_ns_epilog_wait >= 1
    for e in check(path, "n1"):
        assert isinstance(e, ConfigError) and e.file


@FUZZ
@given(data=st.binary(max_size=300), name=st.sampled_from(
    ["namespace.yaml", "job_container.conf", "plugstack.conf"]))
def test_arbitrary_bytes(tmp_path_factory, data, name):
    p = tmp_path_factory.mktemp("b") / name
    p.write_bytes(data)
    _run(str(p))


_keys = st.sampled_from(yaml_reader.OPTION_KEYS + ("nodes", "options", "defaults",
                                                   "node_confs", "other", "<<"))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(),
                     st.text(max_size=12),
                     st.sampled_from(["/tmp", "/var/a", "n[1-3]", "none", "yes", "010",
                                      "CLONE_NEWPID", "/tmp,/var/tmp", "%h/%n", "n[5-3]",
                                      "/var/lib/jobns", "rel/path", "/tmp/x,/tmp"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)


@FUZZ
@given(doc=st.one_of(
    _values,
    st.fixed_dictionaries({}, optional={
        "defaults": st.dictionaries(_keys, _values, max_size=6),
        "node_confs": st.lists(st.fixed_dictionaries(
            {}, optional={"nodes": st.one_of(_scalars, st.lists(_scalars, max_size=3)),
                          "options": st.dictionaries(_keys, _values, max_size=6)}),
            max_size=4),
        "disable_bpf_token": _scalars})))
def test_arbitrary_yaml(tmp_path_factory, doc):
    p = tmp_path_factory.mktemp("y") / "namespace.yaml"
    p.write_text(yaml.safe_dump(doc, default_flow_style=bool(hash(str(doc)) % 2)))
    _run(str(p))


_conf_keys = st.sampled_from(["NodeName", "BasePath", "AutoBasePath", "Dirs", "Shared",
                              "InitScript", "CloneNSScript", "CloneNSScript_Wait",
                              "CloneNSEpilog", "CloneNSEpilog_Wait", "EntireStepInNS",
                              "basepath", "Include", "Foo"])
_conf_values = st.one_of(st.sampled_from(["/a", "n[1-3]", "yes", "0", "UNLIMITED", "/tmp",
                                          '"/x y"', "none", "/tmp,/var/tmp", "-1", ""]),
                         st.text(alphabet=string.printable, max_size=10))
_conf_line = st.one_of(
    st.lists(st.tuples(_conf_keys, st.sampled_from(["=", " = ", "+="]), _conf_values),
             min_size=1, max_size=4).map(lambda kvs: " ".join(k + o + v for k, o, v in kvs)),
    st.text(alphabet=string.printable, max_size=30))


@FUZZ
@given(lines=st.lists(_conf_line, max_size=8))
def test_arbitrary_conf(tmp_path_factory, lines):
    p = tmp_path_factory.mktemp("c") / "job_container.conf"
    p.write_text("\n".join(lines) + "\n")
    _run(str(p))


@FUZZ
@given(args=st.lists(st.one_of(
    st.sampled_from(["base=/var/x", "mount=/tmp", "mount=/var/tmp", "base=", "mount=rel",
                     "size=1", "base=/tmp/slurm"]),
    st.text(alphabet=string.ascii_letters + "=/_.", min_size=1, max_size=12)), max_size=20))
def test_arbitrary_plugstack_args(tmp_path_factory, args):
    p = tmp_path_factory.mktemp("p") / "plugstack.conf"
    p.write_text("required private-tmpdir.so " + " ".join(args) + "\n")
    _run(str(p))
    if args and args[0].startswith(("base=", "mount=")):
        try:
            load("plugstack:" + " ".join(args), "n1", use_cache=False)
        except ConfigError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=12))
def test_fast_scalar_resolution_agrees_with_pyyaml(value):
    yaml_reader._loader("")
    node = yaml.ScalarNode(yaml_reader._PLAIN, value)
    expected = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))
    assert yaml_reader._t(node) == expected
