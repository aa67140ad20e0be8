"""jobns: private per-job Linux namespaces for batch jobs.

Layers (data flows one way): config -> plan -> kernel -> lifecycle; the CLI and the
scheduler adapters call the lifecycle. See docs/architecture.md.
"""

__version__ = "0.1.0"
