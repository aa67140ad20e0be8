"""The job record is written without the json module; it must be exactly JSON."""

import json

from hypothesis import given, settings, strategies as st

from jobns.store import to_json as _to_json

scalars = st.none() | st.booleans() | st.integers() | st.text() | \
    st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_same_text_as_json_dumps(value):
    assert _to_json(value) == json.dumps(value, indent=1, sort_keys=True)
    assert json.loads(_to_json(value)) == value


def test_a_real_record():
    record = {"job_id": "12", "uid": 1001, "env": {"SLURM_JOB_WORK_DIR": "/home/a b\n\udcff"},
              "dirs": ["/tmp", "/dev/shm"], "init_pid": None, "shared": False,
              "created_epoch": 1763712000.123, "backing": {}, "user": "ålice 🐍"}
    assert _to_json(record) == json.dumps(record, indent=1, sort_keys=True)
