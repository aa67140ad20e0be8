"""Slurm adapter: prolog/epilog/restore entry points, live-job discovery and the SPANK shim.

The C plugin (``jobns_spank.c``, built on the node by ``jobns slurm build-plugin``) runs
``jobns slurm prolog|epilog|restore`` and joins tasks to the job's namespaces; everything
else lives here and in the lifecycle. Nothing in this package holds namespace logic.
"""
