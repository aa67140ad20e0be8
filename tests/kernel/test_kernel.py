"""jobns.kernel against the real kernel: mount table lookups, namespace ioctls."""

from __future__ import annotations

import os
import shutil
import tempfile

from jobns import kernel


def test_mount_lookup_with_awkward_names():
    top = tempfile.mkdtemp(prefix="jobns kernel test ", dir="/var/tmp")
    inner = os.path.join(top, "a b\\c")
    deeper = os.path.join(inner, "tab\there")
    sibling = top + "-sibling"       # shares the prefix, is not below
    try:
        os.makedirs(deeper)
        os.makedirs(sibling)
        for p in (inner, deeper, sibling):
            kernel.mount("tmpfs", p, "tmpfs", 0, "size=1m")
            if p == inner:
                os.makedirs(deeper, exist_ok=True)
        assert [m.mount_point for m in kernel.mounts_at(inner)] == [inner]
        assert [m.fstype for m in kernel.mounts_at(inner)] == ["tmpfs"]
        assert sorted(m.mount_point for m in kernel.mounts_below(top)) == sorted([inner, deeper])
        assert [m.mount_point for m in kernel.mounts_below(sibling)] == [sibling]
        assert kernel.mounts_at(top) == []
        full = {m.mount_point for m in kernel.mountinfo()}
        assert {inner, deeper, sibling} <= full
    finally:
        for p in (deeper, inner, sibling):
            try:
                kernel.umount2(p, kernel.MNT_DETACH)
            except OSError:
                pass
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(sibling, ignore_errors=True)


def test_namespace_ioctls():
    with open("/proc/self/ns/mnt", "rb") as f:
        assert kernel.ns_type(f.fileno()) == kernel.CLONE_NEWNS
        ns_id = kernel.mntns_id(f.fileno())
        assert ns_id is None or ns_id > 0
        userns = kernel.ns_get_userns(f.fileno())
        try:
            assert os.fstat(userns).st_ino == os.stat("/proc/self/ns/user").st_ino
        finally:
            os.close(userns)
    with open("/etc/hostname", "rb") as f:
        try:
            kernel.ns_type(f.fileno())
        except OSError as e:
            assert e.errno == 25   # ENOTTY: not a namespace
        else:
            raise AssertionError("a plain file is not a namespace")
    assert kernel.thread_count() == 1
    assert kernel.proc_start_time(os.getpid()) > 0
