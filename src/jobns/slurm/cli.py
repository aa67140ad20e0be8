"""`jobns slurm ...`: the Slurm entry points.

  prolog        create the job's namespaces (Prolog= script or SPANK job_prolog)
  epilog        delete them (Epilog= script or SPANK job_epilog)
  restore       at slurmd start: delete namespaces of jobs with no live slurmstepd
  service       start the per-node service that runs prologs and epilogs for the plugin
  live-jobs     print the jobs that have a live slurmstepd on this node
  build-plugin  compile the SPANK plugin and print its plugstack.conf line; with --native
                the job_container/namespace plugin and its slurm.conf lines
  build-pam     compile the PAM session module (ssh into a job) and print its pam.d line
  write-scripts write Prolog/Epilog wrapper scripts for slurm.conf

The core CLI calls ``main(argv, ctx)``; ctx has ``config_path``, ``node`` and
``log(level, msg)``.
"""

from __future__ import annotations

import os

from jobns.errors import JobnsError, UsageError

DISABLED_MARKER = "slurm-disabled"   # read by the SPANK plugin (jobns_spank.c)


def runtime_dir() -> str:
    from jobns.store import runtime_dir as core_runtime_dir
    return core_runtime_dir()


def _load_config(ctx, node: str):
    from jobns import config
    from jobns.store import select_node
    cfg = config.load(config.discover(ctx.config_path), node)
    select_node(cfg)
    return cfg


def _mark_disabled(disabled: bool) -> None:
    """Tell the SPANK plugin that a job without a namespace is expected on this node."""
    path = os.path.join(runtime_dir(), DISABLED_MARKER)
    if disabled:
        os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
        with open(path, "w") as f:
            f.write("jobns is disabled on this node by its configuration\n")
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _start_service() -> None:
    """Run by a prolog/epilog process the SPANK plugin started because the service did not
    answer (JOBNS_SERVICE=start): start the service for the next jobs (in the background,
    unless one holds its lock)."""
    import sys
    from jobns.slurm import service
    exe = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(exe) == "jobns" and os.access(exe, os.X_OK):
        try:
            from jobns.config.model import runtime_dir as root_runtime_dir
            service.start_detached(exe, root_runtime_dir())   # one service for the host
        except OSError:
            pass       # the next fallback tries again; the job is not affected


def cmd_prolog(args, ctx) -> int:
    try:
        return _prolog(ctx)
    finally:
        if os.environ.get("JOBNS_SERVICE") == "start":
            _start_service()


def cmd_epilog(args, ctx, on_free=None) -> int:
    try:
        return _epilog(ctx, on_free)
    finally:
        if os.environ.get("JOBNS_SERVICE") == "start":
            _start_service()


def _prolog(ctx) -> int:
    from jobns.create import create
    from jobns.slurm.env import job_from_env, node_name
    job = job_from_env(os.environ)
    node = node_name(ctx.node)
    cfg = _load_config(ctx, node)
    if not cfg.enabled:
        _mark_disabled(True)
        ctx.log("info", f"job {job.job_id}: {cfg.disabled_message}; no namespace created")
        return 0
    _mark_disabled(False)
    create(cfg, job, log=ctx.log)
    return 0


def _epilog(ctx, on_free=None) -> int:
    """Tear the job down from where it was created (the runtime index and its record),
    whatever the config says now; then retry teardowns that failed earlier here."""
    from jobns.delete import delete, retry_failed_teardowns
    from jobns.errors import ConfigError
    from jobns.slurm.env import job_id_from_env, node_name
    from jobns.store import indexed_job_dir, select_node
    job_id = job_id_from_env(os.environ)
    node = node_name(ctx.node)
    code = 0
    try:
        cfg = _load_config(ctx, node)
    except ConfigError as exc:
        ctx.log("error", f"{exc}; job {job_id} is torn down from its record")
        cfg, code = None, exc.exit_code
    if cfg is None or not cfg.enabled:
        from jobns.config.model import builtin_default
        from jobns.slurm.nodes import with_layout
        cfg = with_layout(builtin_default(node))
        select_node(cfg)
        if indexed_job_dir(job_id) is None:
            return code       # no namespace was made for this job here
    result = delete(cfg, job_id, log=ctx.log, on_free=on_free)
    # An earlier job's teardown that fails again is logged (and stays teardown-failed);
    # it does not fail this job's epilog.
    retry_failed_teardowns(cfg, log=ctx.log)
    if code:
        return code
    return 0 if result.ok else 1


def cmd_set_mem(args, ctx) -> int:
    """From the SPANK plugin, in the job's first step on the node: the job's memory
    (S_JOB_ALLOC_MEM, MiB, in SLURM_JOB_MEM) for its size=N%mem mounts."""
    from jobns.setmem import set_mem
    from jobns.slurm.env import job_id_from_env, node_name
    job_id = job_id_from_env(os.environ)
    mem = os.environ.get("SLURM_JOB_MEM", "")
    if not (mem.isascii() and mem.isdigit()):
        raise UsageError(f"SLURM_JOB_MEM={mem!r}: not a number of MiB")
    cfg = _load_config(ctx, node_name(ctx.node))
    set_mem(cfg, job_id, int(mem), log=ctx.log)
    return 0


def discover_live(ctx, node: str, spool_dir: str | None = None,
                  slurm_conf: str | None = None) -> tuple[str, set[str]]:
    """(spool dir, job ids) of the jobs that may still run on this host: a live stepd
    socket under any node name in the spool dirs of every slurmd of this host, or a
    slurmstepd process of the job (found in /proc, whatever the spool dir is)."""
    from jobns.slurm import nodes
    from jobns.slurm.live import DEFAULT_SPOOL_DIR, live_jobs
    conf = nodes.read(slurm_conf)
    spool = spool_dir or (conf.slurmd_spool_dir(node) if conf is not None
                          else DEFAULT_SPOOL_DIR)
    if not os.path.isdir(spool):
        ctx.log("warning", f"SlurmdSpoolDir {spool} of node {node} does not exist; live jobs "
                "are told from the slurmstepd processes alone")
    live = live_jobs(spool, log=ctx.log)
    if conf is not None:
        host = conf.host_of(node)
        for other in (conf.nodes_on(host) if host else []):
            other_spool = conf.slurmd_spool_dir(other)
            if other_spool != spool and os.path.isdir(other_spool):
                live |= live_jobs(other_spool, log=ctx.log)
    return spool, live


def _live(args, ctx) -> tuple[str, str, set[str]]:
    from jobns.slurm.env import node_name
    node = node_name(ctx.node)
    if args.slurm_conf:
        os.environ["SLURM_CONF"] = args.slurm_conf
    spool, live = discover_live(ctx, node, args.spool_dir, args.slurm_conf)
    return node, spool, live


def cmd_live_jobs(args, ctx) -> int:
    _, _, live = _live(args, ctx)
    for job_id in sorted(live, key=int):
        print(job_id)
    return 0


def cmd_restore(args, ctx) -> int:
    from jobns.restore import restore
    node, spool, live = _live(args, ctx)
    cfg = _load_config(ctx, node)
    _mark_disabled(not cfg.enabled)
    if not cfg.enabled:
        ctx.log("info", f"{cfg.disabled_message}; nothing to restore")
        return 0
    ctx.log("info", f"restore on node {node}: live jobs from {spool}: "
                    f"{','.join(sorted(live, key=int)) or 'none'}")
    result = restore(cfg, live, log=ctx.log)
    return 0 if result.ok else 1


def cmd_service(args, ctx) -> int:
    from jobns.slurm import service
    if os.geteuid() != 0:
        raise UsageError("service needs root (it creates namespaces for slurmd)")
    if args.stop:
        return service.stop(runtime_dir(), ctx.log)
    return service.run(runtime_dir(), ctx.log, foreground=args.foreground)


def _no_space(value: str, what: str, where: str = "plugstack.conf") -> str:
    if any(c.isspace() for c in value):
        raise UsageError(f"{what} {value!r}: {where} arguments cannot contain spaces")
    return value


def _output(args, filename: str) -> str:
    """Where build-plugin / build-pam install: --output, else <prefix>/lib/jobns/<name>."""
    import sys
    if args.output and args.prefix:
        raise UsageError("give either --prefix or --output")
    return os.path.abspath(args.output or os.path.join(args.prefix or sys.prefix, "lib",
                                                       "jobns", filename))


def cmd_build_plugin(args, ctx) -> int:
    if args.native:
        return _build_native(args, ctx)
    if args.slurm_src or args.slurm_build or args.slurm_plugin_dir:
        raise UsageError("--slurm-src, --slurm-build and --slurm-plugin-dir go with --native")
    from jobns.slurm import build
    output = _output(args, build.PLUGIN)
    jobns_exe = os.path.abspath(args.jobns) if args.jobns else build.default_jobns()
    config_path = os.path.abspath(ctx.config_path) if ctx.config_path else None
    for value, what in ((output, "plugin path"), (jobns_exe, "jobns path"),
                        (config_path or "", "config path"), (args.runtime or "", "runtime dir")):
        _no_space(value, what)
    warnings = build.build(output, include_dir=args.include_dir, cc=args.cc)
    if warnings:
        ctx.log("warning", f"compiler output:\n{warnings}")
    print(f"built {output}")
    print("add this line to plugstack.conf (PlugStackConfig, default plugstack.conf next to "
          "slurm.conf) and set PrologFlags=Contain in slurm.conf:")
    print(build.plugstack_line(output, jobns_exe, config=config_path,
                               runtime=args.runtime, prolog=not args.no_prolog,
                               service=not args.no_service))
    return 0


def _build_native(args, ctx) -> int:
    from jobns.slurm import build
    if not args.slurm_src:
        raise UsageError("--native needs --slurm-src DIR (the configured Slurm source tree "
                         "of the installed version)")
    if args.include_dir or args.no_prolog:
        raise UsageError("--include-dir and --no-prolog are for the SPANK plugin, not --native")
    tree = build.slurm_tree(args.slurm_src, args.slurm_build)
    output = _output(args, tree.filename)
    if os.path.basename(output) != tree.filename:
        raise UsageError(f"--output {output}: Slurm loads {tree.plugin_type} only from a file "
                         f"named {tree.filename}")
    jobns_exe = os.path.abspath(args.jobns) if args.jobns else build.default_jobns()
    config_path = os.path.abspath(ctx.config_path) if ctx.config_path else None
    runtime = os.path.abspath(args.runtime or runtime_dir())
    for value, what in ((output, "plugin path"), (jobns_exe, "jobns path"),
                        (config_path or "", "config path"), (runtime, "runtime dir")):
        _no_space(value, what, "slurm.conf")
    warnings = build.build_native(output, tree, jobns=jobns_exe, config=config_path,
                                  runtime=runtime, service=not args.no_service, cc=args.cc)
    if warnings:
        ctx.log("warning", f"compiler output:\n{warnings}")
    slurm_dir = build.slurm_plugin_dir(args.slurm_plugin_dir)
    here = os.path.dirname(output)
    print(f"built {output} ({tree.plugin_type} for Slurm {tree.version})")
    print("set in slurm.conf on every node and the controller (and remove jobns_spank.so from "
          "plugstack.conf), then restart slurmctld and slurmd:")
    print(f"{tree.conf_key}={tree.plugin_type}")
    print("PrologFlags=Contain")
    if slurm_dir is None:
        print(f"PluginDir=<Slurm's plugin directory>:{here}")
        ctx.log("warning", "Slurm's plugin directory was not found; pass --slurm-plugin-dir")
    elif slurm_dir.split(":")[-1] != here and here not in slurm_dir.split(":"):
        print(f"PluginDir={slurm_dir}:{here}")
    else:
        print(f"PluginDir={slurm_dir}")
    return 0


def cmd_build_pam(args, ctx) -> int:
    from jobns.slurm import build
    output = _output(args, build.PAM_MODULE)
    runtime = os.path.abspath(args.runtime or runtime_dir())
    for value, what in ((output, "module path"), (runtime, "runtime dir")):
        _no_space(value, what, "pam.d")
    warnings = build.build_pam(output, include_dir=args.include_dir, cc=args.cc)
    if warnings:
        ctx.log("warning", f"compiler output:\n{warnings}")
    print(f"built {output}")
    print("add this line to /etc/pam.d/sshd after the pam_slurm_adopt line (append "
          "required_join to deny a login whose job cannot be joined):")
    print(build.pam_line(output, runtime))
    return 0


def cmd_write_scripts(args, ctx) -> int:
    import shlex
    from jobns.slurm import build
    jobns_exe = os.path.abspath(args.jobns) if args.jobns else build.default_jobns()
    head = [jobns_exe]
    if ctx.config_path:
        head += ["--config", os.path.abspath(ctx.config_path)]
    os.makedirs(args.dir, mode=0o755, exist_ok=True)
    for action in ("prolog", "epilog"):
        path = os.path.join(args.dir, f"jobns-{action}")
        env = f"JOBNS_RUNTIME_DIR={shlex.quote(args.runtime)} " if args.runtime else ""
        text = ("#!/bin/sh\n"
                f"# Slurm {action.capitalize()}= for jobns (written by `jobns slurm write-scripts`)\n"
                f"{env}exec {shlex.join(head + ['slurm', action])}\n")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        print(f"{action.capitalize()}={path}")
    return 0


def _parser():
    import argparse
    p = argparse.ArgumentParser(prog="jobns slurm", description="Slurm integration of jobns")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("prolog", help="create the job's namespaces (Slurm Prolog environment)")
    s.set_defaults(func=cmd_prolog)
    s = sub.add_parser("epilog", help="delete the job's namespaces (Slurm Epilog environment)")
    s.set_defaults(func=cmd_epilog)
    s = sub.add_parser("set-mem", help="size the job's size=N%%mem mounts (SLURM_JOB_ID, "
                                       "SLURM_JOB_MEM in MiB; run by the SPANK plugin)")
    s.set_defaults(func=cmd_set_mem)
    for name, func, text in (
            ("restore", cmd_restore, "delete namespaces of jobs that are not running here"),
            ("live-jobs", cmd_live_jobs, "print jobs with a live slurmstepd on this node")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--spool-dir", help="SlurmdSpoolDir (default: from slurm.conf)")
        s.add_argument("--slurm-conf", help="slurm.conf (default: $SLURM_CONF or "
                                            "/etc/slurm/slurm.conf)")
        s.set_defaults(func=func)

    s = sub.add_parser("build-plugin", help="compile the SPANK plugin against slurm/spank.h, "
                                            "or with --native the job_container/namespace "
                                            "plugin against a Slurm source tree")
    s.add_argument("--prefix", help="install to PREFIX/lib/jobns/jobns_spank.so (--native: "
                                    "job_container_jobns.so or namespace_jobns.so) "
                                    "(default: this installation's prefix)")
    s.add_argument("--native", action="store_true",
                   help="build job_container/jobns (Slurm 22.05-25.05) or namespace/jobns "
                        "(25.11+), whichever the tree has, and print the slurm.conf lines")
    s.add_argument("--slurm-src", help="--native: the installed Slurm's configured source tree")
    s.add_argument("--slurm-build", help="--native: where its configure ran, if not in the "
                                         "source tree (holds config.h)")
    s.add_argument("--slurm-plugin-dir", help="--native: Slurm's own plugin directory, for "
                                              "the PluginDir line (default: slurm.conf's, or "
                                              "found)")
    s.add_argument("--output", help="exact path of the .so to write")
    s.add_argument("--include-dir", help="directory that holds slurm/spank.h")
    s.add_argument("--cc", help="C compiler (default: $CC, cc, gcc)")
    s.add_argument("--jobns", help="jobns executable named in the plugstack line")
    s.add_argument("--runtime", help="runtime dir named in the plugstack line")
    s.add_argument("--no-prolog", action="store_true",
                   help="plugstack line with prolog=no (Prolog=/Epilog= scripts do it)")
    s.add_argument("--no-service", action="store_true",
                   help="plugstack line with service=no, or a native plugin built so (a "
                        "jobns process per prolog and epilog instead of the per-node "
                        "service)")
    s.set_defaults(func=cmd_build_plugin)

    s = sub.add_parser("service", help="start the per-node service that runs prologs and "
                       "epilogs for the SPANK plugin (the plugin starts it by itself)")
    s.add_argument("--foreground", action="store_true", help="do not daemonize")
    s.add_argument("--stop", action="store_true", help="stop the running service (SIGTERM) "
                   "and wait until it has gone; requests in flight finish")
    s.set_defaults(func=cmd_service)

    s = sub.add_parser("build-pam", help="compile the PAM session module that moves ssh "
                                         "sessions into the user's job")
    s.add_argument("--prefix", help="install to PREFIX/lib/jobns/pam_jobns.so "
                                    "(default: this installation's prefix)")
    s.add_argument("--output", help="exact path of the .so to write")
    s.add_argument("--include-dir", help="directory that holds security/pam_modules.h")
    s.add_argument("--cc", help="C compiler (default: $CC, cc, gcc)")
    s.add_argument("--runtime", help="runtime dir named in the pam.d line "
                                     "(default: $JOBNS_RUNTIME_DIR or /run/jobns)")
    s.set_defaults(func=cmd_build_pam)

    s = sub.add_parser("write-scripts", help="write jobns-prolog/jobns-epilog for slurm.conf")
    s.add_argument("dir", help="directory to write them to")
    s.add_argument("--jobns", help="jobns executable they run")
    s.add_argument("--runtime", help="JOBNS_RUNTIME_DIR they set")
    s.set_defaults(func=cmd_write_scripts)
    return p


def job_command(op: str, ctx, *, on_free=None) -> int:
    """`jobns slurm prolog` or `epilog` (the jobns service runs this too): the exit
    status, errors logged. For the epilog, `on_free` is called once the job id is free
    (jobns.delete.delete)."""
    try:
        if op == "prolog":
            return cmd_prolog(None, ctx)
        return cmd_epilog(None, ctx, on_free)
    except JobnsError as exc:
        ctx.log("error", str(exc))
        return exc.exit_code


def main(argv: list[str], ctx) -> int:
    # What slurmd runs for every job is dispatched without building the parser (argparse
    # and re cost more to import than the namespace work), like `jobns create`/`delete`.
    if len(argv) == 1 and argv[0] in ("prolog", "epilog"):
        return job_command(argv[0], ctx)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return args.func(args, ctx)
    except JobnsError as exc:
        ctx.log("error", str(exc))
        return exc.exit_code
