"""`computeflow`: the operator's command line.

A user error is one line on stderr and exit status 2; an operation that ran
and was rolled back exits 1, one whose revert failed exits 3 (needs repair);
tracebacks only with --debug. Read commands take --json.

The parser (one table an operator reads to learn the CLI), the simple verbs
and `main`; the history views live in cli_history.py, resume/cancel/terminate
and repair in cli_repair.py, what they all share in cli_support.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from computeflow.errors import ComputeflowError
from conductor import config, logs, moves, reconcile, recovery, render
from conductor.api import SpawnRequest
from conductor.cli_history import (
    cmd_instances_events,
    cmd_instances_list,
    cmd_instances_show,
    cmd_ops_list,
    cmd_ops_show,
)
from conductor.cli_repair import cmd_cancel, cmd_ops_mark_reverted, cmd_ops_retry_revert, cmd_resume, cmd_terminate
from conductor.cli_support import (
    EXIT_OK,
    EXIT_OP_FAILED,
    EXIT_USER_ERROR,
    UserError,
    conductor_of,
    database_of,
    emit,
    read_secret_file,
    run_and_report,
    warn_idle_faults,
)
from conductor.runner import LostOwnership
from drivers.errors import DriverError
from flows import catalog, live_migration
from persistence import hosts, operations, schema
from persistence.session import safe_url, sqlite_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="computeflow", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config-file",
        action="append",
        dest="config_files",
        metavar="PATH",
        help="configuration file (repeatable); default: oslo's search path for computeflow.conf",
    )
    p.add_argument("--debug", action="store_true", help="log to stderr and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, fn: Callable, help: str, parent=sub, json_flag: bool = False):
        c = parent.add_parser(name, help=help, description=help)
        c.set_defaults(func=fn)
        if json_flag:
            c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    cmd("upgrade", cmd_db_upgrade, "upgrade the schema to this release's head", db)
    cmd("version", cmd_db_version, "show the schema revision", db, json_flag=True)

    hs = sub.add_parser("hosts", help="compute hosts").add_subparsers(dest="hosts_cmd", required=True)
    c = cmd("add", cmd_hosts_add, "register a compute host", hs)
    c.add_argument("name")
    c.add_argument("--vcpus", type=int, required=True)
    c.add_argument("--ram-mb", type=int, required=True)
    c.add_argument("--disk-gb", type=int, required=True)
    c.add_argument("--driver", help="fake or libvirt (default: compute_driver)")
    c.add_argument("--uri", help="hypervisor URI (libvirt)")
    cmd("list", cmd_hosts_list, "list hosts with their usage", hs, json_flag=True)
    c = cmd(
        "set-down", cmd_hosts_set_down, "mark a host down: nothing is placed on it, its instances can be evacuated", hs
    )
    c.add_argument("name")
    c = cmd("set-up", cmd_hosts_set_up, "mark a host up again, removing what evacuated instances left on it", hs)
    c.add_argument("name")
    c = cmd("evacuate", cmd_hosts_evacuate, "evacuate every instance of a host marked down", hs)
    c.add_argument("name")
    c.add_argument("--target-host", help="destination (default: chosen per instance by capacity)")
    c.add_argument("--json", action="store_true", help="print each outcome as JSON, no progress")

    cmd("flavors", cmd_flavors, "list flavors", json_flag=True)
    cmd("images", cmd_images, "list images", json_flag=True)

    c = cmd("spawn", cmd_spawn, "create and boot an instance")
    c.add_argument("name")
    c.add_argument("--flavor", required=True)
    c.add_argument("--image", required=True)
    c.add_argument("--host")
    c.add_argument(
        "--network",
        action="append",
        dest="networks",
        metavar="NAME",
        help="attach an interface on this network (repeatable; default: one on 'default')",
    )
    pw = c.add_mutually_exclusive_group()
    pw.add_argument("--admin-password-file", metavar="PATH", help="read the admin password from PATH ('-' for stdin)")
    pw.add_argument("--admin-password", help="admin password (visible in `ps`; prefer the file)")
    c.add_argument("--json", action="store_true", help="print the outcome as JSON, no progress")

    for kind in catalog.instance_operations():
        c = cmd(kind.verb, cmd_operation, kind.help)
        c.set_defaults(kind=kind.name)
        c.add_argument("name", help="instance name or uuid")
        for prm in kind.params:
            _add_param(c, prm)
        c.add_argument("--json", action="store_true", help="print the outcome as JSON, no progress")

    ins = sub.add_parser("instances", help="instances").add_subparsers(dest="inst_cmd", required=True)
    c = cmd("list", cmd_instances_list, "list instances", ins, json_flag=True)
    c.add_argument("--all", action="store_true", help="include deleted instances")
    c = cmd("show", cmd_instances_show, "show one instance", ins, json_flag=True)
    c.add_argument("name")
    c = cmd(
        "events",
        cmd_instances_events,
        "what the hypervisor reported about an instance unasked (a guest that stopped), oldest first",
        ins,
        json_flag=True,
    )
    c.add_argument(
        "name",
        help="instance name or uuid; a name no live instance has is the most recently deleted instance that had it",
    )
    c.add_argument(
        "--deleted",
        action="store_true",
        help="the most recently deleted instance of that name, even if a live one has it",
    )

    ops = sub.add_parser("ops", help="operations").add_subparsers(dest="ops_cmd", required=True)
    c = cmd("list", cmd_ops_list, "list operations, newest first (filters combine)", ops, json_flag=True)
    c.add_argument("--state", choices=operations.ACTIVE_STATES + operations.FINAL_STATES)
    c.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    c.add_argument("--instance", metavar="NAME", help="an instance's name (deleted instances that had it too) or uuid")
    c.add_argument("--kind", help="operation kind, e.g. resize or live_migration")
    c.add_argument("--host", help="the instance is on HOST or the operation named it (placement, source or target)")
    c.add_argument(
        "--since",
        metavar="TIME",
        help="created at or after TIME (ISO-8601; UTC unless it has an offset; a date alone is its midnight)",
    )
    c.add_argument("--until", metavar="TIME", help="created at or before TIME (as --since)")
    c.add_argument("--error", metavar="TEXT", help="the error contains TEXT (any case)")
    c.add_argument(
        "--needs-repair",
        action="store_true",
        help="only FAILED operations (a revert failed), with what each left behind",
    )
    c = cmd("show", cmd_ops_show, "show an operation and its flow log", ops, json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c.add_argument("--transitions", action="store_true", help="every transition, not one line per step")
    cmd(
        "auto-confirm",
        cmd_ops_auto_confirm,
        "confirm the resizes older than [conductor] resize_confirm_window",
        ops,
        json_flag=True,
    )

    for what in live_migration.REQUESTS:
        c = cmd(
            f"live-migration-{what.replace('_', '-')}",
            cmd_live_migration_request,
            f"ask the live migration running on an instance to {what.replace('_', ' ')}",
        )
        c.set_defaults(request=what)
        c.add_argument("name", help="instance name or uuid")

    c = cmd("resume", cmd_resume, "finish operations left by a dead conductor", json_flag=True)
    c.add_argument("id", nargs="?", help="only this operation (id or a unique prefix)")
    c.add_argument(
        "--dry-run",
        action="store_true",
        help="print, per unfinished operation, its owner, where it stopped, what the "
        "hypervisor shows and what resume would do; change nothing",
    )
    c.add_argument(
        "--direction",
        choices=(recovery.FORWARD, recovery.REVERT),
        help="with an operation: go this way where both are safe",
    )
    c = cmd("cancel", cmd_cancel, "stop an operation at its next step and revert what it did", json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for a running operation to finish reverting",
    )
    c = cmd(
        "terminate",
        cmd_terminate,
        "take an operation from its owner even if that owner is "
        "alive but stuck (fenced: whatever it still does is refused) and end it here: "
        "reverted, or finished if it is past its point of no return",
        json_flag=True,
    )
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c = cmd(
        "retry-revert",
        cmd_ops_retry_revert,
        "after fixing the cause, re-run the failed reverts of a FAILED operation (and every earlier step's)",
        ops,
        json_flag=True,
    )
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c = cmd(
        "mark-reverted",
        cmd_ops_mark_reverted,
        "record that a FAILED operation was cleaned up by hand: release its hold and claims, mark it REVERTED",
        ops,
        json_flag=True,
    )
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c.add_argument("--note", help="what was done, kept in the flow log")
    c = cmd(
        "reconcile",
        cmd_reconcile,
        "compare the database with what each host holds; a dry run unless --apply",
        json_flag=True,
    )
    c.add_argument("--host", help="only this host (and the records of its claims)")
    c.add_argument("--apply", action="store_true", help="carry the fixes out, as reconcile operations (see `ops list`)")
    cmd("conductor", cmd_conductor, "serve: claim and run submitted operations until SIGTERM")
    cmd("inventory", cmd_inventory, "what each host's driver holds, and open claims", json_flag=True)
    c = cmd("serve", cmd_serve, "serve the REST API (/api/v1) and the web dashboard (web/)")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    c.add_argument(
        "--hash-token",
        action="store_true",
        help="print the SHA-256 of the token read from stdin, for [web] tokens; serve nothing",
    )
    return p


def _add_param(c: argparse.ArgumentParser, prm: catalog.Param) -> None:
    """One catalogue parameter as a flag. A secret is read from a file (or stdin)
    so that it never appears in `ps` or shell history."""
    flag = "--" + prm.name.replace("_", "-")
    metavar = prm.name.upper()
    if prm.secret:
        c.add_argument(
            flag + "-file",
            dest=f"secretfile_{prm.name}",
            metavar="PATH",
            required=prm.required,
            help=f"{prm.help} (read from PATH; '-' for stdin)",
        )
    elif prm.type is bool:
        c.add_argument(flag, action="store_true", dest=f"param_{prm.name}", help=prm.help)
    elif prm.type is list:
        c.add_argument(
            flag, action="append", dest=f"param_{prm.name}", metavar=metavar, help=prm.help + " (repeatable)"
        )
    else:
        c.add_argument(
            flag, type=prm.type, dest=f"param_{prm.name}", required=prm.required, metavar=metavar, help=prm.help
        )


# -- helpers -----------------------------------------------------------------
def cmd_db_upgrade(args) -> int:
    """The one command that creates a SQLite database other than the embedded default."""
    path = sqlite_file(args.conf.database.connection)
    new = path is not None and not os.path.exists(path)
    db = config.open_database(args.conf, create=True)
    schema.upgrade(db)
    if new:
        print(f"created {safe_url(args.conf.database.connection)}")
    print(f"database at revision {schema.current_revision(db)}")
    return EXIT_OK


def cmd_db_version(args) -> int:
    db = config.open_database(args.conf)
    cur, head = schema.current_revision(db), schema.head_revision()
    emit(args, {"current": cur, "head": head}, f"current: {cur}  head: {head}")
    return EXIT_OK


def cmd_hosts_add(args) -> int:
    with conductor_of(args) as c:
        c.add_host(
            args.name, vcpus=args.vcpus, ram_mb=args.ram_mb, disk_gb=args.disk_gb, driver=args.driver, uri=args.uri
        )
    print(f"host {args.name} added")
    return EXIT_OK


def cmd_hosts_list(args) -> int:
    with database_of(args).session() as s:
        rows = hosts.list_hosts(s)
        emit(args, [render.host_dict(h) for h in rows], render.hosts_table(rows))
    return EXIT_OK


def cmd_hosts_set_down(args) -> int:
    with conductor_of(args) as c:
        moves.set_host_down(c, args.name)
    print(f"host {args.name} is down: evacuate its instances with `computeflow hosts evacuate {args.name}`")
    return EXIT_OK


def cmd_hosts_set_up(args) -> int:
    with conductor_of(args) as c:
        cleaned = moves.set_host_up(c, args.name)
    print(f"host {args.name} is up" + (f"; removed leftovers of {', '.join(cleaned)}" if cleaned else ""))
    return EXIT_OK


def cmd_hosts_evacuate(args) -> int:
    warn_idle_faults(args, "evacuate")
    with conductor_of(args) as c:
        ids = moves.evacuate_host(c, args.name, args.target_host)
        if not ids:
            print(f"nothing to evacuate on {args.name}")
        return max([run_and_report(args, c, op_id) for op_id in ids], default=EXIT_OK)


def cmd_ops_auto_confirm(args) -> int:
    with conductor_of(args) as c:
        ids = moves.auto_confirm(c)
        if not ids and not args.json:
            print("no resize to confirm")
        return max([run_and_report(args, c, op_id) for op_id in ids], default=EXIT_OK)


def cmd_flavors(args) -> int:
    with database_of(args).session() as s:
        rows = hosts.list_flavors(s)
        emit(args, [render.columns_dict(f) for f in rows], render.flavors_table(rows))
    return EXIT_OK


def cmd_images(args) -> int:
    with database_of(args).session() as s:
        rows = hosts.list_images(s)
        emit(args, [render.columns_dict(i) for i in rows], render.images_table(rows))
    return EXIT_OK


def _read_password(args) -> str | None:
    if args.admin_password is not None:
        return args.admin_password
    if args.admin_password_file is None:
        return None
    return read_secret_file(args.admin_password_file, "admin password", one_line=True)


def cmd_spawn(args) -> int:
    password = _read_password(args)
    logs.remember_secret(password)
    req = SpawnRequest(
        name=args.name,
        flavor=args.flavor,
        image=args.image,
        host=args.host,
        networks=tuple(args.networks or ("default",)),
        admin_password=password,
    )
    warn_idle_faults(args, "spawn")
    with conductor_of(args) as c:
        op_id = c.submit_spawn(req)
        return run_and_report(args, c, op_id)


def cmd_operation(args) -> int:
    params = {k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    for k, path in vars(args).items():
        if k.startswith("secretfile_") and path is not None:
            name = k[len("secretfile_") :]
            params[name] = read_secret_file(path, name.replace("_", " "), one_line=name.endswith("password"))
            logs.remember_secret(params[name])
    warn_idle_faults(args, args.kind)
    with conductor_of(args) as c:
        op_id = c.submit(args.kind, args.name, **params)
        return run_and_report(args, c, op_id)


def cmd_live_migration_request(args) -> int:
    with database_of(args).session() as s:
        op_id = live_migration.request(s, args.name, args.request)
    print(
        f"{args.request.replace('_', '-')} requested for live migration {op_id}; it acts at "
        f"the migration's next poll (see computeflow ops show {op_id} --transitions)"
    )
    return EXIT_OK


def cmd_inventory(args) -> int:
    with conductor_of(args) as c:
        leaks = c.leaks()
    payload = {"claims": leaks["claims"], "hosts": {h: inv.__dict__ for h, inv in leaks["hosts"].items()}}
    emit(args, payload, render.inventory_text(leaks))
    return EXIT_OK


def cmd_reconcile(args) -> int:
    with conductor_of(args) as c:
        if args.host is not None:
            with c.db.session() as s:
                if hosts.get_host(s, args.host) is None:
                    raise UserError(f"unknown host {args.host!r}")
        before = reconcile.audit(c, args.host)
        applied = reconcile.apply(c, before) if args.apply else []
        after = reconcile.audit(c, args.host) if args.apply else None
    if args.json:
        payload = before.to_dict() | {"applied": [a.__dict__ for a in applied]}
        if after is not None:
            payload["after"] = after.to_dict()
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(render.reconcile_text(before, applied, after))
    if after is not None:
        failed = any(a.state != operations.SUCCEEDED for a in applied) or after.actionable
        return EXIT_OP_FAILED if failed else EXIT_OK
    return EXIT_OK


def cmd_conductor(args) -> int:
    from conductor import memory, service  # the service's imports are only needed here

    with conductor_of(args) as c:
        status = service.serve(c, may_recycle=True)
    if status == service.EXIT_RECYCLE:
        memory.restart_in_place()  # returns only if exec failed: exit 75, the supervisor restarts it
    return status


def cmd_serve(args) -> int:
    from web import auth, options as web_options, server  # only `serve` needs the web stack

    if args.hash_token:
        return server.hash_token_from_stdin()
    web_options.register(args.conf)
    try:
        return server.serve(args.conf, args.host, args.port)
    except auth.BadTokenConfig as e:
        raise UserError(str(e)) from None


# -- cancel and repair (conductor/cancel.py, conductor/repair.py) -------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.conf = config.load(args.config_files)
        logs.setup(args.conf.conductor.log_file, args.debug)
        return args.func(args)
    except DriverError as e:  # the hypervisor failed a direct call (inventory, reconcile)
        if args.debug:
            raise
        print(f"computeflow: error: {logs.redact(str(e))}", file=sys.stderr)
        return EXIT_OP_FAILED
    except ComputeflowError as e:  # refused on purpose: bad input, configuration, state
        if args.debug:
            raise
        print(f"computeflow: error: {logs.redact(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except LostOwnership as e:  # terminated from another shell, or taken over after a stall
        print(
            f"computeflow: operation {e.op_id} was taken over by another process (terminate, "
            f"or a conductor after this one's lease lapsed); it ends there: "
            f"`computeflow ops show {e.op_id}`",
            file=sys.stderr,
        )
        return EXIT_OP_FAILED
    except KeyboardInterrupt:
        print("computeflow: interrupted; `computeflow resume` finishes what was running", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `computeflow ops list | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return 141


if __name__ == "__main__":
    sys.exit(main())
