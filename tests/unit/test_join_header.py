"""jobns_join.h's record reader: the PAM module reads job.json through a JSON parser, not
through the byte layout jobns happens to write (any whitespace, order, escapes, nesting)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from jobns.store import to_json

CC = shutil.which("cc") or shutil.which("gcc")
HEADER_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "src", "jobns", "slurm")

pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler")

PROBE = r"""
#define _GNU_SOURCE
#include "jobns_join.h"

int main(int argc, char **argv)
{
	struct jobns_record r;
	char err[JOBNS_ERR_MAX] = "";
	int rc = jobns_read_record(argv[1], &r, err, sizeof(err));

	(void) argc;
	printf("%d %llu %llu %d %.3f %s|%s\n", rc, r.uid, r.gid, r.have,
	       r.created_epoch, r.job_id, err);
	return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("joinh")
    src, exe = d / "probe.c", d / "probe"
    src.write_text(PROBE)
    r = subprocess.run([CC, "-Wall", "-Wextra", "-Werror", "-I", HEADER_DIR, "-o", str(exe),
                        str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(exe)


def read(probe, path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    out = subprocess.run([probe, str(path)], capture_output=True, text=True, check=True).stdout
    head, _, err = out.rstrip("\n").partition("|")
    rc, uid, gid, have, epoch, *job = head.split(" ")
    return int(rc), int(uid), int(gid), float(epoch), " ".join(job), err


RECORD = {"version": 1, "job_id": "42", "uid": 1001, "gid": 1002, "created_epoch": 1700.25,
          "env": {"A": "x\n \"uid\": 7,\n", "nested": [1, {"uid": 9}]}, "user": "al\"ice",
          "dirs": ["/tmp"], "init_pid": None, "shared": False}


@pytest.mark.skipif(os.geteuid() != 0, reason="the record must be root-owned")
@pytest.mark.parametrize("text", [
    to_json(RECORD) + "\n",                                   # what jobns writes
    json.dumps(RECORD),                                       # compact
    json.dumps(dict(reversed(list(RECORD.items()))), indent=4),   # another order, indent
    json.dumps(RECORD, ensure_ascii=True, separators=(" , ", " : ")),
], ids=["jobns", "compact", "reordered", "spaced"])
def test_top_level_members_whatever_the_layout(probe, tmp_path, text):
    rc, uid, gid, epoch, job, err = read(probe, tmp_path / "job.json", text)
    assert (rc, uid, gid, epoch, job, err) == (1, 1001, 1002, 1700.25, "42", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="the record must be root-owned")
@pytest.mark.parametrize("text, why", [
    ('{"env": {"uid": 5}}', "no \"uid\" member"),
    ('{"uid": -1}', "bad \"uid\" value"),
    ('{"uid": 1001', "not a JSON object"),
    ('[{"uid": 1001}]', "not a JSON object"),
    ('{"uid": 1001} trailing', "not a JSON object"),
])
def test_malformed_records_are_refused(probe, tmp_path, text, why):
    rc, *_, err = read(probe, tmp_path / "job.json", text)
    assert rc == -1 and why in err, err


def test_missing_record_is_not_an_error(probe, tmp_path):
    out = subprocess.run([probe, str(tmp_path / "none.json")], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("0 ")
