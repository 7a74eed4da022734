"""The catalogue's step names are the names of the steps its flows build: a
fault spec ([fake] faults) is checked against them, so they must not drift."""

from __future__ import annotations

import importlib
import re

import pytest

from flows import catalog
from flows.steps.reconcile import ACTIONS
from tests.flows.catalogue import _atoms

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FLAVOR = {"name": "m", "vcpus": 1, "ram_mb": 64, "root_gb": 1, "ephemeral_gb": 1, "swap_mb": 16}
VIFS = [{"id": f"p{i}", "mac": f"fa:16:3e:00:00:0{i}", "network": "default"} for i in range(3)]


def _build(kind: catalog.OperationKind, *, shared: bool = False, power_on: bool = True, repeat: int = 1):
    """The kind's flow, built from parameters that fit every factory."""
    module, fn = kind.factory.rsplit(".", 1)
    return getattr(importlib.import_module(module), fn)(
        operation=kind.name,
        flavor=FLAVOR,
        vifs=VIFS,
        host="h1",
        end_state=["active", "running"],
        shared_storage=shared,
        power_on=power_on,
        holds_instance=True,
        actions=[{"action": a, "host": "h1"} for a in ACTIONS] * repeat,
    )


def built_step_names(kind: catalog.OperationKind) -> set[str]:
    """Every step name of the kind's flow, over the shapes its parameters give it."""
    names = set()
    for shared in (True, False):
        for power_on in (True, False):
            flow = _build(kind, shared=shared, power_on=power_on, repeat=3)
            names |= {atom.name for atom in _atoms(flow)}
    return names


@sqlite_only
@pytest.mark.parametrize("kind", list(catalog.CATALOG))
def test_the_catalogue_names_every_step_of_each_flow_and_no_other(conductor, kind):
    declared = catalog.get(kind).steps
    built = built_step_names(catalog.get(kind))
    assert {n for n in built if not any(catalog.step_matches(p, n) for p in declared)} == set()
    assert {p for p in declared if not any(catalog.step_matches(p, n) for n in built)} == set()


def test_indexed_step_names_match_their_pattern():
    assert catalog.kinds_with_step("plug_vif_7") == ["spawn", "resize", "migrate", "evacuate"]
    assert catalog.kinds_with_step("plug_vif_x") == []
    assert catalog.kinds_with_step("power_on_guest") == ["power_on"]
    assert "power_on" not in catalog.kinds_with_step("power_on")
    assert all(re.fullmatch(r"[a-z_]+(_N)?", p) for k in catalog.CATALOG.values() for p in k.steps)


def _mappings(kind: catalog.OperationKind) -> list[tuple]:
    flow = _build(kind)
    return [
        (a.name, dict(a.rebind), list(a.requires), list(a.optional), dict(a.revert_rebind), list(a.revert_optional))
        for a in _atoms(flow)
    ]


@sqlite_only
def test_remembered_argument_mappings_are_taskflows_own(conductor, monkeypatch):
    """Step remembers taskflow's argument mapping per class (flows/steps/base.py):
    every flow's steps bind exactly what taskflow's own code binds, and taskflow
    still asks through the method remembered (a taskflow upgrade that stops
    calling it fails here, rather than silently building flows slower)."""
    from flows.steps import base

    base._ARG_MAPPINGS.clear()
    remembered = {kind: _mappings(catalog.get(kind)) for kind in catalog.CATALOG}
    assert base._ARG_MAPPINGS, "taskflow no longer calls Atom._build_arg_mapping"
    again = {kind: _mappings(catalog.get(kind)) for kind in catalog.CATALOG}  # from the memo
    monkeypatch.delattr(base.Step, "_build_arg_mapping")  # taskflow's own, read afresh
    stock = {kind: _mappings(catalog.get(kind)) for kind in catalog.CATALOG}
    assert remembered == again == stock
