"""Placement: which host an instance goes to, for spawn, resize and cold
migration, live migration and evacuate.

One set of rules and one set of messages, so that the same refusal reads the
same whatever the operation: an unknown host, a host marked down, the
instance's own host for a move, and too little room (naming what is short).
Only a first check at submission: the claim step's conditional UPDATE is what
decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from flows.errors import InsufficientCapacity, InvalidRequest, NotFound
from flows.params import FlavorParams
from flows.steps.resources import flavor_disk_gb
from persistence import hosts
from persistence.models import Host

_UNITS = ("vCPU", "MB RAM", "GB disk")


@dataclass(frozen=True)
class Move:
    """The instance a move places elsewhere; its own host is refused unless same_host_ok."""

    instance: str
    source: str
    same_host_ok: bool = False
    #: Added to the refusal of the own host, e.g. the option that would allow it.
    hint: str = ""


def _free(h: Host) -> tuple[int, int, int]:
    return (h.vcpus - h.used_vcpus, h.ram_mb - h.used_ram_mb, h.disk_gb - h.used_disk_gb)


def _need(flavor: FlavorParams) -> tuple[int, int, int]:
    return (flavor["vcpus"], flavor["ram_mb"], flavor_disk_gb(flavor))


def shortfall(h: Host, flavor: FlavorParams) -> str | None:
    """What `h` lacks for `flavor` ("needs 4 vCPU, 1 free, ..."), None if it fits."""
    short = [f"needs {n} {u}, {f} free" for f, n, u in zip(_free(h), _need(flavor), _UNITS, strict=True) if f < n]
    return ", ".join(short) + f" (flavor {flavor['name']})" if short else None


def check(s: Session, name: str, flavor: FlavorParams, move: Move | None = None) -> str:
    """The requested host `name`, or the reason it cannot take the instance."""
    h = hosts.get_host(s, name)
    if h is None:
        raise NotFound("host", name)
    if h.down:
        raise InvalidRequest(f"host {h.name} is down")
    if move is not None and h.name == move.source and not move.same_host_ok:
        raise InvalidRequest(f"instance {move.instance} is already on {h.name}: choose another host{move.hint}")
    short = shortfall(h, flavor)
    if short:
        raise InsufficientCapacity(h.name, short)
    return h.name


def choose(s: Session, flavor: FlavorParams, move: Move | None = None) -> str:
    """The up host with room and the most free RAM; for a move, another host
    before its own (a resize in place doubles the instance's claim there).

    Free RAM counts the spawns already placed on a host that have not started
    (they claim only when they run): without them a burst submitted at once
    would all go to the one host that was emptiest before it. The fit itself
    is checked against the claims alone; the claim step decides."""
    source = move.source if move is not None else None
    own_ok = move is None or move.same_host_ok
    every = hosts.list_hosts(s)
    if not every:
        raise InvalidRequest("no hosts registered: add one with `computeflow hosts add`")
    candidates = [h for h in every if not h.down and shortfall(h, flavor) is None and (h.name != source or own_ok)]
    if not candidates:
        but = "" if own_ok else f" but {source}"
        raise InsufficientCapacity("(any)", f"no host{but} has room for flavor {flavor['name']}")
    pending = hosts.pending_spawn_ram_mb(s) if len(candidates) > 1 else {}
    return max(candidates, key=lambda h: (h.name != source, _free(h)[1] - pending.get(h.name, 0))).name


def place(s: Session, flavor: FlavorParams, requested: str | None, move: Move | None = None) -> str:
    """`requested` if it can take the instance, else refused; None: choose one."""
    return choose(s, flavor, move) if requested is None else check(s, requested, flavor, move)
