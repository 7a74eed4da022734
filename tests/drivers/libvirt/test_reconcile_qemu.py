"""Reconciliation on qemu:///system with real QEMU guests: drift planted with
virsh and by hand is found, the dry run changes nothing, --apply fixes every
finding, and a domain computeflow did not make survives."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from conductor import reconcile
from conductor.api import SpawnRequest
from drivers.base import Vif
from persistence import instances, operations
from persistence.models import Base, Claim, Host
from tests.drivers.libvirt.conftest import SYSTEM_URI
from tests.drivers.libvirt.test_qemu_guests import qemu_conductor  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", SYSTEM_URI, *args], capture_output=True, text=True, check=check, timeout=60)


def _define(xml: str, where: Path) -> None:
    path = where / f"{uuid.uuid4().hex}.xml"
    path.write_text(xml)
    virsh("define", str(path))


def _spawn(c, name: str) -> str:
    op = c.submit_spawn(SpawnRequest(name=name, flavor="m1.tiny", image="cirros"))
    status = c.run(op)
    assert status.state == operations.SUCCEEDED, status.error
    with c.db.session() as s:
        return instances.find_live(s, name).uuid


def _dump(c) -> dict:
    out = {}
    with c.db.engine.connect() as conn:
        for t in Base.metadata.sorted_tables:
            out[t.name] = sorted(repr(tuple(r)) for r in conn.execute(sa.select(t)).all())
    out["report"] = sorted(repr(r) for r in c.rt.driver_for("qemu1").host_report().resources)
    return out


def test_planted_drift_on_real_guests(qemu_conductor, shared_tmp):  # noqa: F811
    c = qemu_conductor
    vm1, vm2 = _spawn(c, "vm1"), _spawn(c, "vm2")
    drv = c.rt.driver_for("qemu1")
    root = Path(drv.root)
    ghost, stray, portless = (str(uuid.uuid4()) for _ in range(3))
    foreign = f"cf-foreign-{uuid.uuid4().hex[:8]}"
    try:
        # A cf- domain with computeflow's marks, defined behind its back (a copy of vm1's).
        _define(virsh("dumpxml", f"cf-{vm1}").stdout.replace(vm1, ghost), shared_tmp)
        # A domain named like ours but made by someone else: no computeflow metadata.
        _define(
            f"<domain type='qemu'><name>{foreign}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>",
            shared_tmp,
        )
        # An active instance whose domain an operator removed with virsh.
        virsh("destroy", f"cf-{vm2}")
        virsh("undefine", f"cf-{vm2}")
        # A stray disk under the instances path, and a port left plugged.
        (root / stray).mkdir()
        (root / stray / "disk.root").write_bytes(b"\0" * 4096)
        drv.plug_vif(portless, Vif(str(uuid.uuid4()), "fa:16:3e:00:00:09"))
        # A claim whose operation ended long ago.
        with c.db.session() as s:
            s.add(
                Claim(
                    operation_id=str(uuid.uuid4()),
                    host="qemu1",
                    instance_uuid=str(uuid.uuid4()),
                    vcpus=1,
                    ram_mb=64,
                    disk_gb=1,
                )
            )
            s.execute(
                sa.update(Host)
                .where(Host.name == "qemu1")
                .values(
                    used_vcpus=Host.used_vcpus + 1,
                    used_ram_mb=Host.used_ram_mb + 64,
                    used_disk_gb=Host.used_disk_gb + 1,
                )
            )

        before = _dump(c)
        found = reconcile.audit(c)
        assert _dump(c) == before  # the dry run changed nothing
        what = {(f.what, f.instance_uuid or f.subject) for f in found.findings}
        assert ("orphan-guest", ghost) in what, [f.line() for f in found.findings]
        assert ("orphan-disk", stray) in what
        assert ("orphan-port", portless) in what
        assert ("guest-missing", vm2) in what
        assert ("foreign-guest", foreign) in what
        assert any(f.what == "stale-claim" for f in found.findings)
        assert not any(f.what == "power-drift" and f.instance_uuid == vm1 for f in found.findings)

        applied = reconcile.apply(c, found)
        assert {a.state for a in applied} == {operations.SUCCEEDED}, applied
        after = reconcile.audit(c)
        assert after.actionable == [], [f.line() for f in after.findings]
        assert virsh("domstate", foreign).stdout.strip() == "shut off"  # untouched
        assert virsh("dominfo", f"cf-{ghost}", check=False).returncode != 0
        assert not (root / stray).exists()
        with c.db.session() as s:
            assert instances.get(s, vm2).vm_state == "error"
            assert instances.get(s, vm1).vm_state == "active"
            assert s.scalar(sa.select(sa.func.count()).select_from(Claim)) == 2
        assert c.run(c.submit_destroy("vm2")).state == operations.SUCCEEDED
        assert drv.inventory().guests == (vm1,)
    finally:
        virsh("undefine", foreign, check=False)
        virsh("undefine", f"cf-{ghost}", check=False)
