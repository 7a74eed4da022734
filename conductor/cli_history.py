"""`computeflow` read commands about history: operations (list, show) and
instances (list, show, events)."""

from __future__ import annotations

from conductor import history, host_limits, liveness, render
from conductor.cli_repair import cmd_ops_needs_repair
from conductor.cli_support import EXIT_OK, UserError, database_of, emit
from persistence import events, flowlog, hosts, instances, operations
from persistence.history import HistoryFilter, read_page
from persistence.models import utcnow


def cmd_instances_list(args) -> int:
    with database_of(args).session() as s:
        rows = instances.list_live(s, include_deleted=args.all)
        down = hosts.down_names(s)
        emit(
            args,
            [render.instance_dict(i) | {"host_down": i.host in down} for i in rows],
            render.instances_table(rows, down),
        )
    return EXIT_OK


def cmd_instances_show(args) -> int:
    with database_of(args).session() as s:
        inst = instances.find_live(s, args.name)
        if inst is None:
            raise UserError(f"unknown instance {args.name!r}")
        last = operations.last_for_instance(s, inst.uuid)
        down = inst.host in hosts.down_names(s)
        emit(args, render.instance_show_dict(inst, last, down), render.instance_text(inst, last, down))
    return EXIT_OK


def cmd_instances_events(args) -> int:
    with database_of(args).session() as s:
        inst = None if args.deleted else instances.find_live(s, args.name)
        inst = inst or instances.find_deleted(s, args.name)
        if inst is None:
            raise UserError(f"unknown instance {args.name!r}")
        rows = events.for_instance(s, inst.uuid)
        emit(
            args,
            [render.event_dict(e) for e in rows],
            render.events_table(rows) if rows else f"no events recorded for {inst.name}",
        )
    return EXIT_OK


def _history_filter(args) -> HistoryFilter:
    """`ops list`'s filters, each checked that needs no database."""
    try:
        history.check_kind(args.kind)
        return HistoryFilter(
            instance=args.instance,
            kind=args.kind,
            state=args.state,
            host=args.host,
            since=history.utc_time(args.since, "--since"),
            until=history.utc_time(args.until, "--until"),
            error=args.error,
        )
    except history.BadQuery as e:
        raise UserError(str(e)) from None


def cmd_ops_list(args) -> int:
    if args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    if args.needs_repair:
        given = [
            f"--{k}"
            for k in ("instance", "kind", "state", "host", "since", "until", "error")
            if getattr(args, k) is not None
        ]
        if given:
            raise UserError(f"--needs-repair takes no filter but --limit (got {', '.join(given)})")
        return cmd_ops_needs_repair(args)
    f = _history_filter(args)
    with database_of(args).session() as s:
        try:
            history.check_names(s, f)
        except history.BadQuery as e:
            raise UserError(str(e)) from None
        rows = read_page(s, f, args.limit).rows
        waiting = host_limits.waiting(s, [o.id for o, _ in rows if o.state in operations.ACTIVE_STATES])
        now = utcnow()
        emit(
            args,
            [render.history_dict(o, name, now, waiting.get(o.id)) for o, name in rows],
            render.history_table(rows, now, waiting),
        )
    return EXIT_OK


def cmd_ops_show(args) -> int:
    with database_of(args).session() as s:
        op = operations.get(s, args.id)
        if op is None:
            raise UserError(operations.not_found(s, args.id))
        rows = flowlog.entries(s, op.id)
        waiting = host_limits.waiting(s, [op.id]).get(op.id)
    steps = flowlog.summarize(rows)
    live = liveness.facts(op, steps, args.conf.conductor.step_timeout, waiting_for=waiting)
    payload = render.operation_show_dict(op, rows, steps, live, with_transitions=args.transitions)
    notes = render.progress_notes(rows)
    emit(args, payload, render.operation_text(op, steps, rows if args.transitions else None, notes, live))
    return EXIT_OK
