"""Fixtures for tests against the real kernel: they need root and mount namespaces.

Each test gets its own base_path (under /var/tmp, a disk filesystem like a real node's)
and its own runtime dir, and the fixture removes every job, mount and file it left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import uuid

import pytest

from jobns import kernel, lifecycle
from jobns.config.model import NodeConfig

from kernelhelp import JOBNS, ROOT, mounts_under


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.kernel)
            if not ROOT:
                item.add_marker(pytest.mark.skip(reason="needs root: creates namespaces "
                                                 "and mounts"))


@dataclasses.dataclass
class Env:
    """One test's node: a base path, a runtime dir and helpers to drive jobns."""

    base: str
    runtime: str
    config_file: str

    def cfg(self, **kw) -> NodeConfig:
        kw.setdefault("node_name", "testnode")
        kw.setdefault("base_path", self.base)
        return NodeConfig(**kw)

    def write_config(self, text: str) -> str:
        with open(self.config_file, "w") as f:
            f.write(text)
        return self.config_file

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["JOBNS_RUNTIME_DIR"] = self.runtime
        env["JOBNS_CONFIG"] = self.config_file
        # the CLI works for the same node as cfg() (jobns never touches another node's job)
        env["SLURMD_NODENAME"] = "testnode"
        env.update(extra)
        return env

    def cli(self, *args, check=False, timeout=60, input=None, **extra_env):
        """Run the jobns CLI; returns CompletedProcess with text output."""
        r = subprocess.run([JOBNS, *args], capture_output=True, text=True, timeout=timeout,
                           env=self.env(**extra_env), input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"jobns {' '.join(args)} -> {r.returncode}\n{r.stdout}\n"
                                 f"{r.stderr}")
        return r

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.base, job_id)

    def leftovers(self) -> list[str]:
        """Everything under base_path besides an empty trash dir."""
        out = []
        if not os.path.isdir(self.base):
            return out
        for name in os.listdir(self.base):
            p = os.path.join(self.base, name)
            if name == lifecycle.TRASH and not os.listdir(p):
                continue
            out.append(name)
        return out


@pytest.fixture
def node(monkeypatch):
    tag = uuid.uuid4().hex[:8]
    base = f"/var/tmp/jobns-test-{tag}/base"
    runtime = f"/var/tmp/jobns-test-{tag}/run"
    os.makedirs(os.path.dirname(base), mode=0o755)
    os.chmod(os.path.dirname(base), 0o755)
    config_file = f"/var/tmp/jobns-test-{tag}/namespace.yaml"
    with open(config_file, "w") as f:
        f.write(f"defaults:\n  base_path: {base}\n  auto_base_path: true\n")
    monkeypatch.setenv("JOBNS_RUNTIME_DIR", runtime)
    monkeypatch.setenv("JOBNS_CONFIG", config_file)
    env = Env(base=base, runtime=runtime, config_file=config_file)
    yield env
    # teardown: delete every job left, unmount everything, remove the directory
    cfg = env.cfg()
    if os.path.isdir(base):
        for name in os.listdir(base):
            if not name.startswith("."):
                with contextlib.suppress(Exception):
                    lifecycle.delete(cfg, name)
        with contextlib.suppress(Exception):
            lifecycle.purge_trash(cfg)
    for mp in sorted(mounts_under(os.path.dirname(base)), key=lambda p: -p.count("/")):
        with contextlib.suppress(OSError):
            kernel.umount2(mp, kernel.MNT_DETACH)
    shutil.rmtree(os.path.dirname(base), ignore_errors=True)

