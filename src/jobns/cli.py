"""Command line: `jobns [--config FILE] [--node NAME] COMMAND ...`.

Exit status: 0 success, 1 the operation failed, 2 usage or configuration error.
Imports are lazy: a job start (`create`) loads only what it uses.
"""

from __future__ import annotations

import os
import sys

from jobns._lazy import lazy

from jobns.errors import JobnsError, UsageError

# argparse imports re (and enum): more than a whole create costs. The commands a prolog
# and an epilog run are parsed by _fast_args; argparse loads for everything else.
argparse = lazy("argparse")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser_class():
    """The ArgumentParser subclass jobns uses (made on first use: argparse loads lazily)."""
    global _PARSER
    if _PARSER is not None:
        return _PARSER

    class Formatter(argparse.HelpFormatter):
        """argparse's formatter asks shutil for the terminal width on every add_argument
        (shutil imports bz2 and lzma); os.get_terminal_size answers without them."""

        def __init__(self, prog, **kwargs):
            if kwargs.get("width") is None:
                try:
                    kwargs["width"] = os.get_terminal_size(sys.stderr.fileno()).columns - 2
                except (OSError, ValueError, AttributeError):
                    kwargs["width"] = int(os.environ.get("COLUMNS", "0") or 0) or 98
            super().__init__(prog, **kwargs)

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("formatter_class", Formatter)
            super().__init__(*args, **kwargs)

        def error(self, message):  # usage errors exit 2 with the usage line
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"jobns: error: {message}\n")

    _PARSER = Parser
    return Parser


_PARSER = None


def _add_run(sub) -> None:
    s = sub.add_parser("run", help="one shot: create a job namespace, run CMD in it, delete it")
    s.add_argument("--user", help="run as this user (default: the caller)")
    s.add_argument("--job", metavar="ID", help="job id (default: a fresh run-XXXXXXXX)")
    s.add_argument("cmd", nargs="*", metavar="-- CMD")


def _add_create(sub) -> None:
    s = sub.add_parser("create", help="create the namespace of job JOB")
    s.add_argument("job", metavar="JOB")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="job user name")
    who.add_argument("--uid", help="job user id")
    s.add_argument("--gid", help="job group id (default: the user's)")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="job variable passed to hook scripts (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def _add_exec(sub) -> None:
    s = sub.add_parser("exec", help="run CMD inside the namespace of job JOB")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--user", help="run as this user (default: the job's user)")
    s.add_argument("cmd", nargs="*", metavar="-- CMD")


def _add_delete(sub) -> None:
    s = sub.add_parser("delete", help="tear down the namespace of JOB and remove its files")
    s.add_argument("job", metavar="JOB")


def _add_restore(sub) -> None:
    s = sub.add_parser("restore", help="node start: prepare base_path, remove dead jobs")
    s.add_argument("--live", default="", metavar="ID,ID...",
                   help="jobs still running on this node (with --all-dead, all others are "
                        "removed)")
    s.add_argument("--all-dead", action="store_true",
                   help="every job not given with --live is dead: remove it even if its "
                        "namespace is still alive")


def _add_fini(sub) -> None:
    sub.add_parser("fini", help="node shutdown: report; running jobs keep their namespaces")


def _add_list(sub) -> None:
    s = sub.add_parser("list", help="job namespaces on this node")
    s.add_argument("--json", action="store_true")
    s.add_argument("--usage", action="store_true",
                   help="also measure bytes and inodes each job holds per private dir")


def _add_config(sub) -> None:
    s = sub.add_parser("config", help="show or check the configuration")
    csub = s.add_subparsers(dest="config_command", metavar="show|check", parser_class=_parser_class())
    csub.required = True
    c = csub.add_parser("show", help="effective config for this node")
    c.add_argument("--json", action="store_true")
    c.add_argument("--node", dest="show_node", metavar="NAME", help="another node's view")
    c = csub.add_parser("check", help="validate a config file (exit 1 with findings)")
    c.add_argument("file", nargs="?", metavar="FILE")
    c.add_argument("--node", dest="check_node", metavar="NAME")


def _add_slurm(sub) -> None:
    s = sub.add_parser("slurm", help="Slurm adapter (prolog, epilog, restore, build-plugin)",
                       add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)


_SUBCOMMANDS = {"run": _add_run, "create": _add_create, "exec": _add_exec, "delete": _add_delete,
                "restore": _add_restore, "fini": _add_fini, "list": _add_list,
                "config": _add_config, "slurm": _add_slurm}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only` (a known command) just that subcommand is built, which
    keeps the job-start path from building every subcommand's arguments."""
    p = _parser_class()(prog="jobns", description="Private per-job namespaces (/tmp, /dev/shm, PID, "
                "user) for batch jobs; Slurm namespace.yaml / job_container.conf compatible.")
    p.add_argument("--config", metavar="FILE", help="config file (namespace.yaml, "
                   "job_container.conf or plugstack.conf); default: $JOBNS_CONFIG, then "
                   "namespace.yaml / job_container.conf next to $SLURM_CONF, then built-in")
    p.add_argument("--node", metavar="NAME", help="node name for node-specific config "
                   "(default: $SLURMD_NODENAME, else the NodeName slurm.conf gives this "
                   "host as slurmd finds it, else the short hostname)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--version", action="version", version="jobns 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_parser_class())
    sub.required = True

    for name, add in _SUBCOMMANDS.items():
        if only not in _SUBCOMMANDS or name == only:
            add(sub)
    return p


class Context:
    """What the commands (and the Slurm adapter) share: config location, node, log."""

    def __init__(self, args):
        self.config_path = args.config
        self.node = args.node
        from jobns.log import Log
        level = "debug" if args.verbose else "warning" if args.quiet else "info"
        self.log = Log(level)
        self._cfg = None

    @property
    def node_name(self) -> str:
        """--node, else the NodeName slurmd has here (SLURMD_NODENAME, slurm.conf),
        else the short hostname."""
        if self.node:
            return self.node
        from jobns.slurm.nodes import node_name
        return node_name()

    def config(self, node: str | None = None):
        from jobns import config
        if node is not None:   # another node's view: its scripts need not exist here
            return config.load(config.discover(self.config_path), node, check_scripts=False)
        if self._cfg is None:
            self._cfg = config.load(config.discover(self.config_path), self.node_name)
            for w in self._cfg.warnings:
                self.log("warning", w)
        return self._cfg


def _command(cmd: list[str]) -> list[str]:
    if not cmd:
        raise UsageError("no command given (use: -- CMD ARGS...)")
    return cmd


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} needs root (namespaces and mounts are privileged)")


def _user(text: str | None, option: str = "--user") -> str | None:
    """A user name, or a uid written as a number (checked to be a valid id)."""
    if text is not None and text.isdigit():
        from jobns.job import parse_id
        parse_id(text, option)
    return text


def _job_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def cmd_run(ctx: Context, args) -> int:
    from jobns.join import resolve_identity, run
    from jobns.job import Job, validate_job_id
    argv = _command(args.cmd)
    _user(args.user)
    _require_root("run")
    ident = resolve_identity(user=args.user) if args.user else \
        resolve_identity(uid=os.getuid(), gid=os.getgid())
    job_id = validate_job_id(args.job) if args.job else "run-" + os.urandom(4).hex()
    job = Job(job_id=job_id, uid=ident.uid, gid=ident.gid, user=ident.name)
    return run(ctx.config(), job, argv, log=ctx.log)


def cmd_create(ctx: Context, args) -> int:
    from jobns.join import resolve_identity
    from jobns.job import Job, parse_id, validate_job_id
    job_id = validate_job_id(args.job)
    # ids are checked before anything is looked up or created: (uid_t)-1, negatives and
    # numbers past 32 bits are usage errors naming the value
    gid = parse_id(args.gid, "--gid") if args.gid is not None else None
    if args.user is not None:
        ident = resolve_identity(user=_user(args.user), gid=gid)
    else:
        ident = resolve_identity(uid=parse_id(args.uid, "--uid"), gid=gid)
    job = Job(job_id=job_id, uid=ident.uid, gid=ident.gid, user=ident.name,
              env=_job_env(args.env))
    cfg = ctx.config()
    if args.dry_run:
        from jobns.plan import build_plan
        if not cfg.enabled:
            raise UsageError(cfg.disabled_message)
        print(build_plan(cfg, job).describe())
        return EXIT_OK
    _require_root("create")
    from jobns.create import create
    create(cfg, job, log=ctx.log)
    return EXIT_OK


def cmd_exec(ctx: Context, args) -> int:
    from jobns.join import exec_in
    argv = _command(args.cmd)
    _user(args.user)
    _require_root("exec")
    return exec_in(ctx.config(), args.job, argv, user=args.user, log=ctx.log)


def cmd_delete(ctx: Context, args) -> int:
    from jobns.delete import delete
    _require_root("delete")
    result = delete(ctx.config(), args.job, log=ctx.log)
    if not result.existed:
        ctx.log("info", f"job {args.job}: no such job on this node; nothing to delete")
        return EXIT_OK
    if not result.ok:
        from jobns.log import escape
        for path, op, err, msg in result.failures:
            print(escape(f"jobns: not removed: {path}: {op}: {msg} [{err}]"), file=sys.stderr)
        for mp in result.skipped_mounts:
            print(escape(f"jobns: not removed (a mount point): {mp}"), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_restore(ctx: Context, args) -> int:
    from jobns.restore import restore
    from jobns.job import validate_job_id
    _require_root("restore")
    given = {validate_job_id(x.strip()) for x in args.live.split(",") if x.strip()}
    cfg = ctx.config()
    if not cfg.enabled:
        ctx.log("info", f"{cfg.disabled_message}; nothing to restore")
        return EXIT_OK
    live: set[str] | None
    if args.all_dead:
        live = given
    else:
        live = _slurm_live(ctx, cfg.node_name)
        if live is not None:
            live |= given
        elif args.live.strip():
            live = given
    result = restore(cfg, live, log=ctx.log)
    return EXIT_OK if result.ok else EXIT_FAILED


def _slurm_live(ctx: Context, node: str) -> set[str] | None:
    """On a Slurm node (slurm.conf names it), the jobs that still run here, found as
    `jobns slurm restore` finds them; None elsewhere (nothing tells live from dead)."""
    from jobns.slurm import nodes
    conf = nodes.read()
    if conf is None or conf.host_of(node) is None:
        return None
    from jobns.slurm.cli import discover_live
    spool, live = discover_live(ctx, node)
    ctx.log("info", f"restore on Slurm node {node}: live jobs (stepd sockets in {spool}, "
                    f"slurmstepd processes): {','.join(sorted(live, key=int)) or 'none'}")
    return live


def cmd_fini(ctx: Context, args) -> int:
    from jobns.restore import list_jobs
    cfg = ctx.config()
    jobs = list_jobs(cfg) if cfg.enabled else []
    ctx.log("info", f"fini: {len(jobs)} job namespaces stay in place for their jobs")
    return EXIT_OK


def cmd_list(ctx: Context, args) -> int:
    from jobns.restore import list_jobs
    cfg = ctx.config()
    jobs = list_jobs(cfg) if cfg.enabled else []
    if args.usage:
        _require_root("list --usage")
        from jobns.usage import job_usage
        for j in jobs:
            j["usage"] = job_usage(cfg.jobs_path, j["job_id"], j.get("dirs") or [],
                                   j.get("backing"))
    if args.json:
        import json
        print(json.dumps(jobs, indent=1))
        return EXIT_OK
    if not jobs:
        print(f"no job namespaces under {cfg.jobs_path}" if cfg.enabled else
              cfg.disabled_message)
        return EXIT_OK
    rows = [("JOB", "USER", "STATE", "CREATED", "DIRS", "NAMESPACES", "CONTAINMENT")]
    if args.usage:
        rows[0] += ("USAGE",)
    for j in jobs:
        flags = ",".join(_NS_SHORT.get(f, f) for f in j.get("clone_ns_flags") or [])
        row = (j["job_id"], str(j.get("user") or "?"), j["state"],
               str(j.get("created") or "?"), ",".join(j.get("dirs") or []), flags,
               j.get("containment") or "scan")
        if args.usage:
            from jobns.usage import human
            row += (" ".join(f"{d}={human(u['bytes'])}/{u['inodes']}i"
                             for d, u in j["usage"].items()) or "-",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


_NS_SHORT = {"CLONE_NEWNS": "mnt", "CLONE_NEWPID": "pid", "CLONE_NEWUSER": "user"}


def cmd_config(ctx: Context, args) -> int:
    from jobns import config
    if args.config_command == "show":
        cfg = ctx.config(args.show_node) if args.show_node else ctx.config()
        if args.json:
            import json
            print(json.dumps(cfg.as_dict(), indent=1))
        else:
            from jobns.log import escape
            sys.stdout.write(escape(config.format_show(cfg)))
        return EXIT_OK
    path = args.file or config.discover(ctx.config_path)
    if path is None:
        print("no config file found; the built-in default is in use "
              "(base_path /var/lib/jobns, dirs /tmp,/dev/shm)")
        return EXIT_OK
    from jobns.log import escape
    findings = config.check(path, args.check_node or ctx.node)
    for f in findings:
        print(escape(str(f)))
    if findings:
        print(escape(f"{path}: {len(findings)} finding(s)"), file=sys.stderr)
        return EXIT_FAILED
    print(escape(f"{path}: ok"))
    return EXIT_OK


def cmd_slurm(ctx: Context, args) -> int:
    from jobns.slurm import cli as slurm_cli
    return slurm_cli.main(list(args.args), ctx)


COMMANDS = {"run": cmd_run, "create": cmd_create, "exec": cmd_exec, "delete": cmd_delete,
            "restore": cmd_restore, "fini": cmd_fini, "list": cmd_list, "config": cmd_config,
            "slurm": cmd_slurm}


class _Args:
    """What _fast_args returns: the same attributes argparse would set."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _fast_args(argv: list[str], command: list[str] | None) -> _Args | None:
    """Parse `create`, `delete`, `exec` and `slurm prolog|epilog` in their plain forms
    without argparse. Anything
    else (other commands, --help, unusual spellings, any error) returns None, and argparse
    parses it, with its usual messages. Tests check both parsers agree."""
    glob = {"config": None, "node": None, "verbose": False, "quiet": False}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("--config", "--node") and i + 1 < len(argv) and \
                not argv[i + 1].startswith("-"):
            glob[tok[2:]] = argv[i + 1]
            i += 2
        elif tok in ("-v", "--verbose", "-q", "--quiet"):
            glob["verbose" if tok in ("-v", "--verbose") else "quiet"] = True
            i += 1
        else:
            break
    if i >= len(argv):
        return None
    cmd, rest = argv[i], argv[i + 1:]
    if cmd == "slurm" and rest in (["prolog"], ["epilog"]) and command is None:
        return _Args(command="slurm", args=rest, **glob)
    if not rest or rest[0].startswith("-"):
        return None
    job, opts = rest[0], rest[1:]
    if len(opts) % 2:
        return None
    pairs = [(opts[k], opts[k + 1]) for k in range(0, len(opts), 2)]
    if any(v.startswith("-") for _, v in pairs):
        return None
    names = [n for n, _ in pairs]
    if cmd == "delete" and not pairs and command is None:
        return _Args(command="delete", job=job, **glob)
    if cmd == "exec" and command and names in ([], ["--user"]):
        return _Args(command="exec", job=job, user=dict(pairs).get("--user"), cmd=command,
                     **glob)
    if cmd != "create" or command is not None:
        return None
    env: list[str] = []
    single: dict[str, str] = {}
    for name, value in pairs:
        if name == "--env":
            env.append(value)
        elif name in ("--user", "--uid", "--gid") and name not in single:
            single[name] = value
        else:
            return None
    if ("--user" in single) == ("--uid" in single):
        return None
    for name in ("--uid", "--gid"):
        if name in single and not (single[name].isascii() and single[name].isdigit()):
            return None
    return _Args(command="create", job=job, user=single.get("--user"), uid=single.get("--uid"),
                 gid=single.get("--gid"),
                 env=env, dry_run=False, **glob)


def _command_word(argv: list[str]) -> str | None:
    """The subcommand named in argv (skipping the global options and their values)."""
    it = iter(argv)
    for tok in it:
        if tok in ("--config", "--node"):
            next(it, None)
        elif not tok.startswith("-"):
            return tok
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` and `exec` take the job's command after "--"; split it off before argparse so
    # that the command's own options are never read as jobns options.
    command: list[str] | None = None
    if "--" in argv and any(c in argv[:argv.index("--")] for c in ("run", "exec")):
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = _fast_args(argv, command)
    if args is None:
        parser = build_parser(_command_word(argv))
        args, extra = parser.parse_known_args(argv)
        if args.command == "slurm":      # the adapter parses its own options, --help too
            args.args = extra + list(args.args)
        elif extra:
            parser.error("unrecognized arguments: " + " ".join(extra))
        if command is not None:
            if getattr(args, "cmd", None):
                parser.error("give the command after '--' only")
            args.cmd = command
    ctx = Context(args)
    try:
        code = COMMANDS[args.command](ctx, args)
        if args.command in ("run", "exec") and code < 0:
            from jobns.join import exit_like
            return exit_like(code)
        return code
    except JobnsError as e:
        ctx.log("error", str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # e.g. `jobns list | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
