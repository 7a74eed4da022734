"""`computeflow`: the operator's command line.

A user error is one line on stderr and exit status 2; an operation that ran
and failed (reverted, or needs an operator) exits 1; tracebacks only with
--debug. Read commands take --json.

One module (~590 lines) on purpose: each verb is a short parser entry and a
short handler that calls conductor/api.py, cancel.py or repair.py, and
rendering lives in render.py; splitting the verbs would scatter the one
table an operator reads to learn the CLI.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable

from conductor import config, logs, render
from conductor import cancel, liveness, reconcile, recovery, repair
from conductor import moves
from conductor.api import Conductor, SpawnRequest
from conductor.handle import OperationHandle
from conductor.jobboard import JobboardError
from conductor.runner import LostOwnership, StepEvent
from drivers.faults import BadFaultSpec
from flows import catalog, live_migration
from flows.errors import OperationError
from persistence import events, flowlog, hosts, instances, operations, progress, schema
from persistence.errors import PersistenceError
from persistence.models import utcnow
from persistence.secrets import SecretUnavailable
from persistence.session import Database

EXIT_OK, EXIT_OP_FAILED, EXIT_USER_ERROR = 0, 1, 2
#: The operation's revert failed: the instance is held in `error` until an operator repairs it.
EXIT_NEEDS_REPAIR = 3
#: The flow log's name for the flow itself (persistence/flowlog.py skips it too).
FLOW_STEP = "(flow)"


class UserError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="computeflow", description=__doc__.splitlines()[0])
    p.add_argument("--config-file", action="append", dest="config_files", metavar="PATH",
                   help="configuration file (repeatable); default: oslo's search path for computeflow.conf")
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
    c = cmd("set-down", cmd_hosts_set_down, "mark a host down: nothing is placed on it, "
            "its instances can be evacuated", hs)
    c.add_argument("name")
    c = cmd("set-up", cmd_hosts_set_up, "mark a host up again, removing what evacuated "
            "instances left on it", hs)
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
    c.add_argument("--network", action="append", dest="networks", metavar="NAME",
                   help="attach an interface on this network (repeatable; default: one on 'default')")
    pw = c.add_mutually_exclusive_group()
    pw.add_argument("--admin-password-file", metavar="PATH",
                    help="read the admin password from PATH ('-' for stdin)")
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
    c = cmd("events", cmd_instances_events, "what the hypervisor reported about an instance "
            "unasked (a guest that stopped), oldest first", ins, json_flag=True)
    c.add_argument("name", help="instance name or uuid; a name no live instance has is "
                   "the most recently deleted instance that had it")
    c.add_argument("--deleted", action="store_true",
                   help="the most recently deleted instance of that name, even if a live one has it")

    ops = sub.add_parser("ops", help="operations").add_subparsers(dest="ops_cmd", required=True)
    c = cmd("list", cmd_ops_list, "list operations, newest first (filters combine)", ops,
            json_flag=True)
    c.add_argument("--state", choices=operations.ACTIVE_STATES + operations.FINAL_STATES)
    c.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    c.add_argument("--instance", metavar="NAME", help="an instance's name (deleted instances "
                   "that had it too) or uuid")
    c.add_argument("--kind", help="operation kind, e.g. resize or live_migration")
    c.add_argument("--host", help="the instance is on HOST or the operation named it "
                   "(placement, source or target)")
    c.add_argument("--since", metavar="TIME", help="created at or after TIME (ISO-8601; UTC "
                   "unless it has an offset; a date alone is its midnight)")
    c.add_argument("--until", metavar="TIME", help="created at or before TIME (as --since)")
    c.add_argument("--error", metavar="TEXT", help="the error contains TEXT (any case)")
    c.add_argument("--needs-repair", action="store_true",
                   help="only FAILED operations (a revert failed), with what each left behind")
    c = cmd("show", cmd_ops_show, "show an operation and its flow log", ops, json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c.add_argument("--transitions", action="store_true", help="every transition, not one line per step")
    cmd("auto-confirm", cmd_ops_auto_confirm, "confirm the resizes older than "
        "[conductor] resize_confirm_window", ops, json_flag=True)

    for what in live_migration.REQUESTS:
        c = cmd(f"live-migration-{what.replace('_', '-')}", cmd_live_migration_request,
                f"ask the live migration running on an instance to {what.replace('_', ' ')}")
        c.set_defaults(request=what)
        c.add_argument("name", help="instance name or uuid")

    c = cmd("resume", cmd_resume, "finish operations left by a dead conductor", json_flag=True)
    c.add_argument("id", nargs="?", help="only this operation (id or a unique prefix)")
    c.add_argument("--dry-run", action="store_true",
                   help="print, per unfinished operation, its owner, where it stopped, what the "
                        "hypervisor shows and what resume would do; change nothing")
    c.add_argument("--direction", choices=(recovery.FORWARD, recovery.REVERT),
                   help="with an operation: go this way where both are safe")
    c = cmd("cancel", cmd_cancel, "stop an operation at its next step and revert what it did",
            json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for a running operation to finish reverting")
    c = cmd("terminate", cmd_terminate, "take an operation from its owner even if that owner is "
            "alive but stuck (fenced: whatever it still does is refused) and end it here: "
            "reverted, or finished if it is past its point of no return", json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c = cmd("retry-revert", cmd_ops_retry_revert, "after fixing the cause, re-run the failed "
            "reverts of a FAILED operation (and every earlier step's)", ops, json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c = cmd("mark-reverted", cmd_ops_mark_reverted, "record that a FAILED operation was cleaned "
            "up by hand: release its hold and claims, mark it REVERTED", ops, json_flag=True)
    c.add_argument("id", help="operation id (or a unique prefix of at least 4 characters)")
    c.add_argument("--note", help="what was done, kept in the flow log")
    c = cmd("reconcile", cmd_reconcile, "compare the database with what each host holds; "
            "a dry run unless --apply", json_flag=True)
    c.add_argument("--host", help="only this host (and the records of its claims)")
    c.add_argument("--apply", action="store_true",
                   help="carry the fixes out, as reconcile operations (see `ops list`)")
    cmd("conductor", cmd_conductor, "serve: claim and run submitted operations until SIGTERM")
    cmd("inventory", cmd_inventory, "what each host's driver holds, and open claims", json_flag=True)
    c = cmd("serve", cmd_serve, "serve the REST API (/api/v1) and the web dashboard (web/)")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    c.add_argument("--hash-token", action="store_true",
                   help="print the SHA-256 of the token read from stdin, for [web] tokens; serve nothing")
    return p


def _add_param(c: argparse.ArgumentParser, prm: catalog.Param) -> None:
    """One catalogue parameter as a flag. A secret is read from a file (or stdin)
    so that it never appears in `ps` or shell history."""
    flag = "--" + prm.name.replace("_", "-")
    metavar = prm.name.upper()
    if prm.secret:
        c.add_argument(flag + "-file", dest=f"secretfile_{prm.name}", metavar="PATH",
                       required=prm.required, help=f"{prm.help} (read from PATH; '-' for stdin)")
    elif prm.type is bool:
        c.add_argument(flag, action="store_true", dest=f"param_{prm.name}", help=prm.help)
    elif prm.type is list:
        c.add_argument(flag, action="append", dest=f"param_{prm.name}", metavar=metavar,
                       help=prm.help + " (repeatable)")
    else:
        c.add_argument(flag, type=prm.type, dest=f"param_{prm.name}", required=prm.required,
                       metavar=metavar, help=prm.help)


# -- helpers -----------------------------------------------------------------
def _conductor(args) -> Conductor:
    return Conductor(args.conf)


def _database(args) -> Database:
    """For read commands: the database, upgraded if embedded, no runtime."""
    db = Database(args.conf.database.connection, connect_timeout=args.conf.database.connect_timeout)
    db.check_reachable()
    schema.ensure_current(db, auto_upgrade=args.conf.conductor.auto_upgrade and db.dialect == "sqlite")
    return db


def _emit(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if getattr(args, "json", False) else text)


class Progress:
    """Prints each persisted step transition as it happens.

    Only steps: the flow's own state changes (step `(flow)` in the flow log:
    RESUMING, SUSPENDED, ...) are bookkeeping an operator cannot act on, and
    the outcome line says how the flow ended."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic()

    def __call__(self, ev: StepEvent) -> None:
        if self.enabled and ev.step != FLOW_STEP:
            print(render.progress_line(time.monotonic() - self.t0, ev), flush=True)

    def on_progress(self, op_id: str, step: str, state: str, text: str) -> None:
        """A long step's progress (persistence/progress.py), e.g. a live migration's,
        or a step's retry: RETRYING with the error, then RUNNING with the attempt."""
        self(StepEvent(op_id, step, f"{state} {text}".rstrip()))


def _run_and_report(args, c: Conductor, op_id: str) -> int:
    quiet = getattr(args, "json", False)
    if not quiet:
        print(f"operation {op_id}", flush=True)
    if c.conf.conductor.jobboard:  # a conductor service runs it
        return _wait_and_report(args, c, op_id)
    shown = Progress(not quiet)
    progress.add_listener(shown.on_progress)
    try:
        c.run(op_id, on_event=shown)
    finally:
        progress.remove_listener(shown.on_progress)
    return _report_outcome(args, c, op_id)


def _report_outcome(args, c: Conductor, op_id: str) -> int:
    """The ended operation in one paragraph; its exit status (0, 1, or 3: needs repair)."""
    with c.db.session() as s:
        op = operations.get(s, op_id)
        inst = instances.get(s, op.instance_uuid) if op.instance_uuid else None
        left = repair.left_behind(s, op) if op.state == operations.FAILED else []
    _emit(args, render.operation_dict(op), render.outcome_text(op, inst, left))
    return exit_status(op.state)


def exit_status(state: str) -> int:
    return {operations.SUCCEEDED: EXIT_OK, operations.FAILED: EXIT_NEEDS_REPAIR}.get(
        state, EXIT_OP_FAILED)


# -- commands ----------------------------------------------------------------
def cmd_db_upgrade(args) -> int:
    db = Database(args.conf.database.connection, connect_timeout=args.conf.database.connect_timeout)
    db.check_reachable()
    schema.upgrade(db)
    print(f"database at revision {schema.current_revision(db)}")
    return EXIT_OK


def cmd_db_version(args) -> int:
    db = Database(args.conf.database.connection, connect_timeout=args.conf.database.connect_timeout)
    db.check_reachable()
    cur, head = schema.current_revision(db), schema.head_revision()
    _emit(args, {"current": cur, "head": head}, f"current: {cur}  head: {head}")
    return EXIT_OK


def cmd_hosts_add(args) -> int:
    with _conductor(args) as c:
        c.add_host(args.name, vcpus=args.vcpus, ram_mb=args.ram_mb, disk_gb=args.disk_gb,
                   driver=args.driver, uri=args.uri)
    print(f"host {args.name} added")
    return EXIT_OK


def cmd_hosts_list(args) -> int:
    with _database(args).session() as s:
        rows = hosts.list_hosts(s)
        _emit(args, [render.host_dict(h) for h in rows], render.hosts_table(rows))
    return EXIT_OK


def cmd_hosts_set_down(args) -> int:
    with _conductor(args) as c:
        moves.set_host_down(c, args.name)
    print(f"host {args.name} is down: evacuate its instances with "
          f"`computeflow hosts evacuate {args.name}`")
    return EXIT_OK


def cmd_hosts_set_up(args) -> int:
    with _conductor(args) as c:
        cleaned = moves.set_host_up(c, args.name)
    print(f"host {args.name} is up" + (f"; removed leftovers of {', '.join(cleaned)}" if cleaned else ""))
    return EXIT_OK


def cmd_hosts_evacuate(args) -> int:
    with _conductor(args) as c:
        ids = moves.evacuate_host(c, args.name, args.target_host)
        if not ids:
            print(f"nothing to evacuate on {args.name}")
        return max([_run_and_report(args, c, op_id) for op_id in ids], default=EXIT_OK)


def cmd_ops_auto_confirm(args) -> int:
    with _conductor(args) as c:
        ids = moves.auto_confirm(c)
        if not ids and not args.json:
            print("no resize to confirm")
        return max([_run_and_report(args, c, op_id) for op_id in ids], default=EXIT_OK)


def cmd_flavors(args) -> int:
    with _database(args).session() as s:
        rows = hosts.list_flavors(s)
        _emit(args, [render.columns_dict(f) for f in rows], render.flavors_table(rows))
    return EXIT_OK


def cmd_images(args) -> int:
    with _database(args).session() as s:
        rows = hosts.list_images(s)
        _emit(args, [render.columns_dict(i) for i in rows], render.images_table(rows))
    return EXIT_OK


def _read_password(args) -> str | None:
    if args.admin_password is not None:
        return args.admin_password
    if args.admin_password_file is None:
        return None
    try:
        if args.admin_password_file == "-":
            value = sys.stdin.readline()
        else:
            with open(args.admin_password_file) as f:
                value = f.readline()
    except OSError as e:
        raise UserError(f"cannot read admin password file: {e.strerror}") from None
    value = value.rstrip("\n")
    if not value:
        raise UserError("the admin password file is empty")
    return value


def cmd_spawn(args) -> int:
    password = _read_password(args)
    logs.remember_secret(password)
    req = SpawnRequest(name=args.name, flavor=args.flavor, image=args.image, host=args.host,
                       networks=tuple(args.networks or ("default",)), admin_password=password)
    with _conductor(args) as c:
        op_id = c.submit_spawn(req)
        return _run_and_report(args, c, op_id)


def _read_secret_file(path: str, what: str) -> str:
    try:
        if path == "-":
            value = sys.stdin.read()
        else:
            with open(path) as f:
                value = f.read()
    except OSError as e:
        raise UserError(f"cannot read the {what} file: {e.strerror}") from None
    if not value:
        raise UserError(f"the {what} file is empty")
    return value


def cmd_operation(args) -> int:
    params = {k[len("param_"):]: v for k, v in vars(args).items()
              if k.startswith("param_") and v is not None}
    for k, path in vars(args).items():
        if k.startswith("secretfile_") and path is not None:
            name = k[len("secretfile_"):]
            # A password is one line; file contents are taken whole.
            value = _read_secret_file(path, name.replace("_", " "))
            params[name] = value.rstrip("\n") if name.endswith("password") else value
            logs.remember_secret(params[name])
    with _conductor(args) as c:
        op_id = c.submit(args.kind, args.name, **params)
        return _run_and_report(args, c, op_id)


def _down_hosts(s) -> set[str]:
    return {h.name for h in hosts.list_hosts(s) if h.down}


def cmd_instances_list(args) -> int:
    with _database(args).session() as s:
        rows = instances.list_live(s, include_deleted=args.all)
        down = _down_hosts(s)
        _emit(args, [render.instance_dict(i) | {"host_down": i.host in down} for i in rows],
              render.instances_table(rows, down))
    return EXIT_OK


def cmd_instances_show(args) -> int:
    with _database(args).session() as s:
        inst = instances.find_live(s, args.name)
        if inst is None:
            raise UserError(f"unknown instance {args.name!r}")
        last = operations.last_for_instance(s, inst.uuid)
        down = inst.host in _down_hosts(s)
        _emit(args, render.instance_show_dict(inst, last, down),
              render.instance_text(inst, last, down))
    return EXIT_OK


def cmd_instances_events(args) -> int:
    with _database(args).session() as s:
        inst = None if args.deleted else instances.find_live(s, args.name)
        inst = inst or instances.find_deleted(s, args.name)
        if inst is None:
            raise UserError(f"unknown instance {args.name!r}")
        rows = events.for_instance(s, inst.uuid)
        _emit(args, [render.event_dict(e) for e in rows],
              render.events_table(rows) if rows else f"no events recorded for {inst.name}")
    return EXIT_OK


def _utc_time(value: str | None, flag: str) -> dt.datetime | None:
    """An ISO-8601 time as naive UTC (how times are stored); no offset means UTC."""
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{flag} {value!r} is not an ISO-8601 time "
                        "(e.g. 2026-12-04T05:43:03Z or 2026-12-04)") from None
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _history_filter(args) -> operations.HistoryFilter:
    """`ops list`'s filters, each checked that needs no database: a typo is an
    error, not an empty list."""
    if args.kind is not None:
        try:
            catalog.get(args.kind)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
    return operations.HistoryFilter(
        instance=args.instance, kind=args.kind, state=args.state, host=args.host,
        since=_utc_time(args.since, "--since"), until=_utc_time(args.until, "--until"),
        error=args.error)


def _check_names(s, f: operations.HistoryFilter) -> None:
    """The host and instance a filter names exist (an instance: ever, deleted too)."""
    if f.host is not None and hosts.get_host(s, f.host) is None:
        raise UserError(f"unknown host {f.host!r}")
    if f.instance is not None and not instances.ever_named(s, f.instance):
        raise UserError(f"unknown instance {f.instance!r} (never had that name or uuid)")


def cmd_ops_list(args) -> int:
    if args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    if args.needs_repair:
        given = [f"--{k}" for k in ("instance", "kind", "state", "host", "since", "until", "error")
                 if getattr(args, k) is not None]
        if given:
            raise UserError(f"--needs-repair takes no filter but --limit (got {', '.join(given)})")
        return cmd_ops_needs_repair(args)
    f = _history_filter(args)
    with _database(args).session() as s:
        _check_names(s, f)
        rows = operations.history(s, f, limit=args.limit)
        now = utcnow()
        _emit(args, [render.history_dict(o, name, now) for o, name in rows],
              render.history_table(rows, now))
    return EXIT_OK


def cmd_ops_show(args) -> int:
    with _database(args).session() as s:
        op = operations.get(s, args.id)
        if op is None:
            raise UserError(operations.not_found(s, args.id))
        rows = flowlog.entries(s, op.id)
    steps = flowlog.summarize(rows)
    live = liveness.facts(op, steps, args.conf.conductor.step_timeout)
    payload = render.operation_dict(op) | {
        "hosts": render.operation_hosts(op),
        "live": live.to_dict(), "cancel_requested_by": op.cancel_requested_by,
        "lease_expires_at": render._ts(op.lease_expires_at),
        "steps": [render.step_dict(st) for st in steps],
        "transitions": [render.transition_dict(r) for r in rows] if args.transitions else None,
    }
    notes = render.progress_notes(rows)
    payload["progress"] = [render.transition_dict(r) for r in notes]
    _emit(args, payload, render.operation_text(op, steps, rows if args.transitions else None,
                                               notes, live))
    return EXIT_OK


def cmd_live_migration_request(args) -> int:
    with _database(args).session() as s:
        op_id = live_migration.request(s, args.name, args.request)
    print(f"{args.request.replace('_', '-')} requested for live migration {op_id}; it acts at "
          f"the migration's next poll (see computeflow ops show {op_id} --transitions)")
    return EXIT_OK


def cmd_resume(args) -> int:
    if args.direction and not args.id:
        raise UserError("--direction needs an operation: `computeflow resume OP --direction ...`")
    if args.dry_run:
        with _conductor(args) as c:
            found = recovery.plans(c, args.id)
        _emit(args, [p.__dict__ | {"probes": [q.__dict__ for q in p.probes]} for p in found],
              "\n".join(p.text() for p in found) or "nothing to resume")
        return EXIT_OK
    shown = Progress(not args.json)
    progress.add_listener(shown.on_progress)
    with _conductor(args) as c:
        if args.id:
            done = [recovery.resume_one(c, args.id, args.direction, cancel.operator(),
                                        on_event=shown)]
        else:
            done = c.resume(on_event=shown)
        running = [] if done else _running_elsewhere(c)
    _emit(args, [s.__dict__ for s in done],
          "\n".join(f"{s.id} {s.kind} {s.state}" + (f": {s.error}" if s.error else "") for s in done)
          or "nothing to resume" + "".join(f"\n  {line}" for line in running))
    return max((exit_status(s.state) for s in done), default=EXIT_OK)


def _running_elsewhere(c: Conductor) -> list[str]:
    """The unfinished operations a live owner runs: why a resume did nothing with them."""
    with c.db.session() as s:
        ops = operations.resumable(s)
    return [f"{o.id} {o.kind} {o.state}: its owner {o.owner} is alive and running it"
            for o in ops if recovery.owner_status(o) == "alive"]


def cmd_inventory(args) -> int:
    with _conductor(args) as c:
        leaks = c.leaks()
    payload = {"claims": leaks["claims"],
               "hosts": {h: inv.__dict__ for h, inv in leaks["hosts"].items()}}
    _emit(args, payload, render.inventory_text(leaks))
    return EXIT_OK


def cmd_reconcile(args) -> int:
    with _conductor(args) as c:
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


def _wait_and_report(args, c: Conductor, op_id: str) -> int:
    """Scale-out: the operation is on the jobboard; wait for a conductor to end it."""
    if not getattr(args, "json", False):
        print(f"queued on {c.conf.conductor.jobboard}; waiting for a conductor", flush=True)
    OperationHandle(op_id, c).wait()
    return _report_outcome(args, c, op_id)


def cmd_conductor(args) -> int:
    from conductor import service  # the service's imports are only needed here
    with _conductor(args) as c:
        return service.serve(c)


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
def cmd_cancel(args) -> int:
    with _conductor(args) as c:
        res = cancel.cancel(c, args.id, cancel.operator(), wait=args.wait)
    o = res.outcome
    if res.ended:
        text = f"operation {o.op_id} ({o.kind}) {res.state}" + (f": {res.error}" if res.error else "")
    else:
        text = (f"cancel of operation {o.op_id} ({o.kind}) requested: its owner {o.owner} stops "
                f"it at its next step and reverts it (it is {res.state}; "
                f"see `computeflow ops show {o.op_id}`)")
    expired = args.wait > 0 and not res.ended
    if expired:
        text += f"\ncomputeflow: still {res.state} after --wait {args.wait:g} s"
    _emit(args, {"id": o.op_id, "kind": o.kind, "state": res.state, "error": res.error,
                 "owner": o.owner, "ended": res.ended}, text)
    return EXIT_OP_FAILED if expired else EXIT_OK


def cmd_terminate(args) -> int:
    shown = Progress(not args.json)
    progress.add_listener(shown.on_progress)
    with _conductor(args) as c:
        try:
            res = cancel.terminate(c, args.id, cancel.operator(), on_event=shown)
        finally:
            progress.remove_listener(shown.on_progress)
        if not args.json:
            print(f"operation {res.op_id} ({res.kind}) taken from {res.former_owner or 'no owner'}"
                  f" and {'reverted' if res.direction == 'revert' else 'finished'} here; anything "
                  "its former owner still does is refused (fenced)", flush=True)
        return _report_outcome(args, c, res.op_id)


def _repair_dict(item: repair.RepairItem) -> dict:
    return render.operation_dict(item.op) | {"left_behind": [
        {"step": lb.step, "state": lb.state, "error": lb.error, "resources": lb.resources}
        for lb in item.left_behind]}


def _repair_text(item: repair.RepairItem) -> str:
    op = item.op
    lines = [f"{op.id} {op.kind} {op.state}: {op.error}"]
    if item.left_behind:
        lines.append("  left behind (newest first):")
        lines += [f"    {lb.line()}" for lb in item.left_behind]
    lines.append(f"  fix the cause, then `computeflow ops retry-revert {op.id}`; or clean up "
                 f"by hand and `computeflow ops mark-reverted {op.id}`")
    return "\n".join(lines)


def cmd_ops_needs_repair(args) -> int:
    with _conductor(args) as c:
        items = repair.needing_repair(c, args.limit)
    _emit(args, [_repair_dict(i) for i in items],
          "\n".join(_repair_text(i) for i in items) or "no operation needs repair")
    return EXIT_OK


def cmd_ops_retry_revert(args) -> int:
    quiet = getattr(args, "json", False)
    shown = Progress(not quiet)
    progress.add_listener(shown.on_progress)
    with _conductor(args) as c:
        try:
            status = repair.retry_revert(c, args.id, cancel.operator(), on_event=shown)
        finally:
            progress.remove_listener(shown.on_progress)
        with c.db.session() as s:
            op = operations.get(s, status.id)
            item = repair.RepairItem(op, repair.left_behind(s, op) if op.state == operations.FAILED
                                     else [])
    _emit(args, _repair_dict(item), _repair_text(item) if op.state == operations.FAILED
          else f"operation {op.id} ({op.kind}) {op.state}: {op.error}")
    if op.state == operations.FAILED:
        return EXIT_NEEDS_REPAIR
    return EXIT_OK if op.state == operations.REVERTED else EXIT_OP_FAILED


def cmd_ops_mark_reverted(args) -> int:
    with _conductor(args) as c:
        item = repair.mark_reverted(c, args.id, cancel.operator(), args.note)
        # What the hosts still hold of the instance, after the hand cleanup.
        still = [f for f in reconcile.audit(c).findings
                 if item.op.instance_uuid and f.instance_uuid == item.op.instance_uuid]
    text = f"operation {item.op.id} ({item.op.kind}) marked REVERTED: {item.op.error}"
    if item.left_behind:
        text += "\n  the flow log said these were left behind:\n" + \
            "\n".join(f"    {lb.line()}" for lb in item.left_behind)
    if still:
        text += ("\n  the hosts and the database still disagree about the instance "
                 "(`computeflow reconcile --apply` fixes those with an action):\n"
                 + "\n".join(f"    {f.line()}" for f in still))
    else:
        text += "\n  the hosts agree with the database about the instance: nothing is left"
    _emit(args, _repair_dict(item) | {"still_disagree": [f.__dict__ for f in still]}, text)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.conf = config.load(args.config_files)
        logs.setup(args.conf.conductor.log_file, args.debug)
        return args.func(args)
    except (UserError, OperationError, PersistenceError, SecretUnavailable,
            config.ConfigError, BadFaultSpec, JobboardError) as e:
        if args.debug:
            raise
        print(f"computeflow: error: {logs.redact(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except LostOwnership as e:  # terminated from another shell, or taken over after a stall
        print(f"computeflow: operation {e.op_id} was taken over by another process (terminate, "
              f"or a conductor after this one's lease lapsed); it ends there: "
              f"`computeflow ops show {e.op_id}`", file=sys.stderr)
        return EXIT_OP_FAILED
    except KeyboardInterrupt:
        print("computeflow: interrupted; `computeflow resume` finishes what was running",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `computeflow ops list | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return 141


if __name__ == "__main__":
    sys.exit(main())
