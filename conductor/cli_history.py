"""`computeflow` read commands about history: operations (list, show) and
instances (list, show, events)."""
from __future__ import annotations

import datetime as dt

from conductor import liveness, render
from conductor.cli_repair import cmd_ops_needs_repair
from conductor.cli_support import EXIT_OK, UserError, database_of, emit
from flows import catalog
from persistence import events, flowlog, hosts, instances, operations
from persistence.models import utcnow


def _down_hosts(s) -> set[str]:
    return {h.name for h in hosts.list_hosts(s) if h.down}


def cmd_instances_list(args) -> int:
    with database_of(args).session() as s:
        rows = instances.list_live(s, include_deleted=args.all)
        down = _down_hosts(s)
        emit(args, [render.instance_dict(i) | {"host_down": i.host in down} for i in rows],
             render.instances_table(rows, down))
    return EXIT_OK


def cmd_instances_show(args) -> int:
    with database_of(args).session() as s:
        inst = instances.find_live(s, args.name)
        if inst is None:
            raise UserError(f"unknown instance {args.name!r}")
        last = operations.last_for_instance(s, inst.uuid)
        down = inst.host in _down_hosts(s)
        emit(args, render.instance_show_dict(inst, last, down),
             render.instance_text(inst, last, down))
    return EXIT_OK


def cmd_instances_events(args) -> int:
    with database_of(args).session() as s:
        inst = None if args.deleted else instances.find_live(s, args.name)
        inst = inst or instances.find_deleted(s, args.name)
        if inst is None:
            raise UserError(f"unknown instance {args.name!r}")
        rows = events.for_instance(s, inst.uuid)
        emit(args, [render.event_dict(e) for e in rows],
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
    with database_of(args).session() as s:
        _check_names(s, f)
        rows = operations.history(s, f, limit=args.limit)
        now = utcnow()
        emit(args, [render.history_dict(o, name, now) for o, name in rows],
             render.history_table(rows, now))
    return EXIT_OK


def cmd_ops_show(args) -> int:
    with database_of(args).session() as s:
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
    emit(args, payload, render.operation_text(op, steps, rows if args.transitions else None,
                                              notes, live))
    return EXIT_OK
