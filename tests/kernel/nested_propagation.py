"""Run by test_propagation.py inside a nested mount namespace (unshare --mount
--propagation unchanged): this process is the "host" of the jobs it creates. It makes its
`/` rshared (what systemd does on a real node; the VM's real `/` is private), creates a
`shared: true` and a `shared: false` job through the lifecycle, mounts a tmpfs after
that, and reports (JSON on stdout) what each job sees. It then creates and deletes
REPEAT more jobs from this nested namespace, where kernel 6.18 orders namespace ids per
CPU and pinning a namespace with a lower id than ours fails with EINVAL.

argv: BASE TOP JOBNS_CLI REPEAT
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from jobns import kernel, lifecycle
from jobns.config.model import NodeConfig
from jobns.errors import OperationError
from jobns.job import Job

PID, USER, MNT = "CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS"


def my_mntns_id() -> int | None:
    with open("/proc/self/ns/mnt", "rb") as f:
        return kernel.mntns_id(f.fileno())


def naive_ids_below(parent_id: int, rounds: int = 5) -> tuple[int, int]:
    """How many plain unshare(CLONE_NEWNS) calls (no ordering workaround), one per CPU and
    round, got an id below ours: each of those would have failed to pin."""
    below = total = 0
    for _ in range(rounds):
        for cpu in sorted(os.sched_getaffinity(0)):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    os.sched_setaffinity(0, {cpu})
                    kernel.unshare(kernel.CLONE_NEWNS)
                    os.write(w, str(my_mntns_id()).encode())
                finally:
                    os._exit(0)
            os.close(w)
            data = os.read(r, 64)
            os.close(r)
            os.waitpid(pid, 0)
            total += 1
            if data and int(data) < parent_id:
                below += 1
    return below, total


def main() -> None:
    base, top, cli, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    report: dict = {"nested_ns": os.readlink("/proc/self/ns/mnt")}
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_SHARED)
    parent_id = my_mntns_id()
    report["naive_below"], report["naive_total"] = naive_ids_below(parent_id)

    def cfg(shared: bool, flags) -> NodeConfig:
        return NodeConfig(node_name="testnode", base_path=base, shared=shared,
                          clone_ns_flags=flags)

    def in_job(job_id: str, *argv: str, user: str | None = None) -> dict:
        args = [cli, "exec", job_id] + (["--user", user] if user else []) + ["--", *argv]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        return {"rc": r.returncode, "out": r.stdout, "err": r.stderr}

    shared, private = cfg(True, (PID, USER, MNT)), cfg(False, (PID, MNT))
    owner = dict(uid=4242, gid=4243, user="jobowner")
    late = os.path.join(top, "late")
    inner = os.path.join(top, "inner")
    os.mkdir(late)
    os.mkdir(inner)
    lifecycle.create(shared, Job(job_id="601", **owner))
    lifecycle.create(private, Job(job_id="602", **owner))
    try:
        # a host mount made after both jobs started (autofs, a late NFS mount...)
        kernel.mount("late-mount", late, "tmpfs", 0, "size=1m,mode=0755")
        with open(os.path.join(late, "marker"), "w") as f:
            f.write("late\n")
        report["shared_late"] = in_job("601", "cat", os.path.join(late, "marker"))
        report["private_late"] = in_job("602", "ls", "-A", late)
        # a mount made inside the shared job never reaches the host
        report["inner_mount"] = in_job("601", "mount", "-t", "tmpfs", "inside-job", inner,
                                       user="root")
        report["inner_in_job"] = in_job("601", "grep", "-c", f" {inner} ",
                                        "/proc/self/mountinfo")
        report["inner_on_host"] = sum(m.mount_point == inner for m in kernel.mountinfo())
        # the host unmounting it propagates too (autofs expiry)
        kernel.umount2(late)
        report["shared_after_umount"] = in_job("601", "ls", "-A", late)
        # what the shared job sees of base_path and of pins made after it started
        lifecycle.create(private, Job(job_id="603", **owner))
        report["shared_base"] = in_job("601", "ls", "-A", base)
        report["shared_mountinfo"] = in_job("601", "cat", "/proc/self/mountinfo")
    finally:
        for j in ("601", "602", "603"):
            lifecycle.delete(shared, j)

    errors = []
    for i in range(repeat):
        j = str(700 + i)
        try:
            lifecycle.create(cfg(i % 2 == 0, (PID, MNT) if i % 3 else (PID, USER, MNT)),
                             Job(job_id=j, **owner))
            r = in_job(j, "true")
            if r["rc"] != 0:
                errors.append(f"{j}: exec: {r['err'].strip()}")
        except OperationError as e:
            errors.append(f"{j}: {e}")
        finally:
            result = lifecycle.delete(shared, j)
            if not result.ok:
                errors.append(f"{j}: delete: {result.summary()}")
    report["repeat"] = repeat
    report["repeat_errors"] = errors
    print(json.dumps(report))


if __name__ == "__main__":
    main()
