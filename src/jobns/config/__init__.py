"""Configuration: discovery and the public entry points.

Public API (used by the CLI, the lifecycle and the adapters):

- ``discover(explicit: str | None) -> str | None``: the config file to use, or None for
  the built-in default. Order: explicit (--config), $JOBNS_CONFIG, namespace.yaml then
  job_container.conf next to $SLURM_CONF (default /etc/slurm/slurm.conf).
- ``load(path: str | None, node: str) -> NodeConfig``: the effective config for `node`.
  Raises ConfigError.
- ``check(path: str, node: str | None = None) -> list[ConfigError]``: every finding.
"""

from __future__ import annotations

import os

from jobns.config.model import NodeConfig, builtin_default

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"


def discover(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    env = os.environ.get("JOBNS_CONFIG")
    if env:
        return env
    conf_dir = os.path.dirname(os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)
    for name in ("namespace.yaml", "job_container.conf"):
        candidate = os.path.join(conf_dir, name)
        if os.path.exists(candidate):
            return candidate
    return None


def load(path: str | None, node: str) -> NodeConfig:
    if path is None:
        return builtin_default(node)
    raise NotImplementedError("config readers are being written")


def check(path: str, node: str | None = None) -> list:
    raise NotImplementedError("config readers are being written")
