"""The read side of instances and hosts for the API and the pages: one
instance with its history, and each host's driver inventory next to what the
database says is on it (what `computeflow inventory` shows, side by side).
"""

from __future__ import annotations

from conductor import render
from persistence import claims, events, hosts, instances
from persistence.history import HistoryFilter, read_page
from persistence.models import utcnow
from web.context import ApiError, WebState

HISTORY_LIMIT = 200


def instance_detail(s, name_or_uuid: str) -> dict:
    """The instance (a live one by name, any by uuid, else the last deleted
    one of that name), its operations newest first and the hypervisor's events."""
    inst = instances.find_live(s, name_or_uuid) or instances.find_deleted(s, name_or_uuid)
    if inst is None:
        raise ApiError(404, f"no instance named {name_or_uuid!r} (nor with that uuid)")
    rows = read_page(s, HistoryFilter(instance=inst.uuid), HISTORY_LIMIT + 1).rows
    now = utcnow()
    return {
        "instance": render.instance_dict(inst)
        | {"deleted": inst.live_marker != "", "host_down": inst.host in hosts.down_names(s)},
        "operations": [render.history_dict(o, name, now) for o, name in rows[:HISTORY_LIMIT]],
        "more": len(rows) > HISTORY_LIMIT,
        "claims": [
            {"operation_id": c.operation_id, "host": c.host, "vcpus": c.vcpus, "ram_mb": c.ram_mb, "disk_gb": c.disk_gb}
            for c in claims.claims_for_instance(s, inst.uuid)
        ],
        "events": [
            {"at": render.fmt_time_ms(ev.at), "host": ev.host, "event": ev.event, "power_state": ev.power_state}
            for ev in events.for_instance(s, inst.uuid)
        ],
    }


def inventory(ws: WebState) -> dict:
    """Per host: its database row, the live instances the database places on
    it, the open claims, and what its driver holds (`computeflow inventory`);
    `only_driver` / `only_database`: guests one side has and the other not. A
    host whose driver cannot be reached gets `driver_error` instead."""
    c = ws.conductor()
    with ws.db.session() as s:
        host_rows = hosts.list_hosts(s)
        live = instances.list_live(s)
        all_claims = claims.all_claims(s)
        out = []
        for h in host_rows:
            placed = [i for i in live if i.host == h.name]
            out.append(
                {
                    "host": render.host_dict(h),
                    "database": {
                        "instances": [{"uuid": i.uuid, "name": i.name, "vm_state": i.vm_state} for i in placed],
                        "claims": [cl.operation_id for cl in all_claims if cl.host == h.name],
                    },
                }
            )
    names = {i.uuid: i.name for i in live}
    for entry in out:
        name = entry["host"]["name"]
        if entry["host"].get("down"):
            entry["driver_error"] = "marked down: not asked"
            continue
        try:
            inv = c.rt.driver_for(name).inventory()
        except Exception as e:  # noqa: BLE001 - an unreachable host is shown, not a crash
            entry["driver_error"] = f"{type(e).__name__}: {e}"
            continue
        entry["driver"] = {k: list(v) for k, v in inv.__dict__.items()}
        on_db = {i["uuid"] for i in entry["database"]["instances"]}
        entry["only_driver"] = [{"uuid": g, "name": names.get(g)} for g in inv.guests if g not in on_db]
        entry["only_database"] = [i for i in entry["database"]["instances"] if i["uuid"] not in set(inv.guests)]
    return {"hosts": out}
