"""Shared by the catalogue-operation tests: each case's preparation, its
expected end state, its steps, and a snapshot of everything an operation may
touch (instance record, claims, host usage, images, every fake host's state
file and the image store), so that "reverted" can mean "exactly as before"."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field

import sqlalchemy as sa

from conductor.api import Conductor, SpawnRequest
from flows import catalog
from persistence import claims, hosts, instances
from persistence.models import Instance


@dataclass(frozen=True)
class Case:
    op: str
    params: dict = field(default_factory=dict)
    #: operations run after the spawn to reach the state `op` needs.
    setup: tuple[tuple[str, dict], ...] = ()
    #: (vm_state, power_state) after success; None: unchanged.
    end: tuple[str, str] | None = None
    #: fake-state keys a failure after the side effect cannot restore (not revertible).
    irreversible: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.op + "".join(f"-{k}" for k, v in self.params.items() if v is True)


def steps_of(case: Case) -> list[str]:
    kind = catalog.get(case.op)
    module, fn = kind.factory.rsplit(".", 1)
    flow = getattr(importlib.import_module(module), fn)(operation=case.op, **case.params)
    return [atom.name for atom in _atoms(flow)]


def _atoms(node):
    if hasattr(node, "iter_nodes"):
        for child, _ in node.iter_nodes():
            yield from _atoms(child)
    else:
        yield node


def prepare(c: Conductor, case: Case, flavor: str = "m1.small") -> str:
    """Spawn vm1 and bring it to the state the case needs; its uuid."""
    op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor=flavor, image="cirros"))
    assert c.run(op_id).state == "SUCCEEDED"
    for op, params in case.setup:
        status = c.run(c.submit(op, "vm1", **params))
        assert status.state == "SUCCEEDED", status.error
    with c.db.session() as s:
        return instances.find_live(s, "vm1").uuid


def world(c: Conductor, uuid: str, ignore: tuple[str, ...] = ()) -> dict:
    """Everything an operation may change, as plain data."""
    with c.db.session() as s:
        inst = instances.get(s, uuid)
        record = {
            col.key: getattr(inst, col.key)
            for col in Instance.__table__.columns
            if col.key not in ("updated_at", "created_at")
        }
        claim_rows = sorted((cl.operation_id, cl.host, cl.vcpus, cl.ram_mb, cl.disk_gb) for cl in claims.all_claims(s))
        usage = [(h.name, h.used_vcpus, h.used_ram_mb, h.used_disk_gb) for h in hosts.list_hosts(s)]
        images = sorted((i.name, i.path) for i in hosts.list_images(s))
    state_dir = c.conf.fake.state_dir
    fake = {}
    for name in sorted(os.listdir(state_dir)):
        if name.endswith(".json"):
            with open(os.path.join(state_dir, name)) as f:
                fake[name] = _without(json.load(f), ignore)
    store = c.conf.image_store_path
    files = sorted(os.listdir(store)) if os.path.isdir(store) else []
    return {
        "instance": record,
        "claims": claim_rows,
        "usage": usage,
        "images": images,
        "fake": fake,
        "image_store": files,
    }


def _without(state: dict, keys: tuple[str, ...]) -> dict:
    state.pop("base_images", None)  # a cache shared by instances: kept by design
    for g in state.get("guests", {}).values():
        for k in keys:
            g.pop(k, None)
    return state


def open_claims(c: Conductor) -> int:
    with c.db.session() as s:
        return len(claims.all_claims(s))


def instance(c: Conductor, uuid: str) -> Instance:
    with c.db.session() as s:
        return instances.get(s, uuid)


def count(c: Conductor, model) -> int:
    with c.db.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model))
