"""Reconciliation with the hypervisor: planted drift is found, the dry run
changes nothing, --apply fixes every finding as operations and leaves what
computeflow did not make alone; a repair that left a resize copy behind ends
clean; an apply killed at a step and run again converges."""

from __future__ import annotations

import json
import signal
import uuid

import pytest
import sqlalchemy as sa

from conductor import config, reconcile, reconcile_report
from conductor.api import Conductor, SpawnRequest
from drivers.base import Vif
from persistence import instances, operations
from persistence.models import Base, Claim, Host, Operation
from tests.conftest import run_cli, write_conf
from tests.flows.test_destroy import failed_resize_marked_reverted

ORPHAN = "0b3c1c9e-1111-4222-8333-444455556666"


def _spawn(c: Conductor, name: str, host: str = "h1") -> str:
    op = c.submit_spawn(SpawnRequest(name=name, flavor="m1.small", image="cirros", host=host))
    assert c.run(op).state == operations.SUCCEEDED
    with c.db.session() as s:
        return instances.find_live(s, name).uuid


def _dump(c: Conductor) -> dict:
    """Every row of every table, and every host's report: the dry run's witness."""
    out = {}
    with c.db.engine.connect() as conn:
        for t in Base.metadata.sorted_tables:
            rows = conn.execute(sa.select(t)).all()
            out[t.name] = sorted(repr(tuple(r)) for r in rows)
    for h in ("h1", "h2"):
        out[f"report {h}"] = sorted(repr(r) for r in c.rt.driver_for(h).host_report().resources)
    return out


def _plant(c: Conductor) -> dict[str, str]:
    """Drift an operator's hands (or a crash outside computeflow) would leave."""
    c.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    web, db1 = _spawn(c, "web1"), _spawn(c, "db1")
    h1, h2 = c.rt.driver_for("h1"), c.rt.driver_for("h2")
    h1.simulate_undefine_by_hand(web)  # `virsh undefine` of an active instance
    h1.simulate_foreign_guest("cf-made-by-someone")  # not ours: must survive
    h2.plug_vif(ORPHAN, Vif("vif-left", "fa:16:3e:00:00:01"))  # a port left plugged
    from drivers.base import DiskKind, DiskSpec

    h2.create_disk(ORPHAN, DiskSpec(DiskKind.EPHEMERAL, 1024))  # a stray disk
    with h1.state.change() as st:  # the guest stopped, no event came
        st["guests"][db1]["power_state"] = "shutdown"
    with c.db.session() as s:  # a claim of an operation long gone
        s.add(
            Claim(
                operation_id=str(uuid.uuid4()),
                host="h2",
                instance_uuid=str(uuid.uuid4()),
                vcpus=2,
                ram_mb=2048,
                disk_gb=20,
            )
        )
        s.execute(
            sa.update(Host)
            .where(Host.name == "h2")
            .values(
                used_vcpus=Host.used_vcpus + 2, used_ram_mb=Host.used_ram_mb + 2048, used_disk_gb=Host.used_disk_gb + 20
            )
        )
        s.execute(sa.update(Host).where(Host.name == "h1").values(used_vcpus=Host.used_vcpus + 3))
    return {"web": web, "db1": db1}


def _kinds(result: reconcile_report.Audit) -> list[tuple[str, str | None]]:
    return sorted((f.what, f.host) for f in result.findings)


def test_planted_drift_is_found_the_dry_run_changes_nothing_and_apply_fixes_it(conductor):
    ids = _plant(conductor)
    before = _dump(conductor)
    found = reconcile.audit(conductor)
    assert _dump(conductor) == before  # the dry run touched neither database nor hosts
    assert _kinds(found) == sorted(
        [
            ("guest-missing", "h1"),
            ("power-drift", "h1"),
            ("foreign-guest", "h1"),
            ("orphan-port", "h2"),
            ("orphan-disk", "h2"),
            ("stale-claim", "h2"),
            ("usage-drift", "h1"),
        ]
    ), [f.line() for f in found.findings]
    by_what = {f.what: f for f in found.findings}
    assert by_what["guest-missing"].instance_uuid == ids["web"]
    assert by_what["foreign-guest"].action is None

    applied = reconcile.apply(conductor, found)
    assert all(a.state == operations.SUCCEEDED for a in applied), applied
    after = reconcile.audit(conductor)
    assert after.actionable == []
    # Left: what is not computeflow's, and an instance in error for its operator.
    assert _kinds(after) == [("foreign-guest", "h1"), ("guest-missing", "h1")]
    with conductor.db.session() as s:
        web, db1 = instances.get(s, ids["web"]), instances.get(s, ids["db1"])
        assert (web.vm_state, web.power_state, web.held_by) == ("error", "nostate", None)
        assert (db1.vm_state, db1.power_state, db1.held_by) == ("stopped", "shutdown", None)
        h2 = s.get(Host, "h2")
        assert (h2.used_vcpus, h2.used_ram_mb, h2.used_disk_gb) == (0, 0, 0)
        ops = s.scalars(sa.select(Operation).where(Operation.kind == "reconcile")).all()
        assert len(ops) == len(applied) and {o.state for o in ops} == {operations.SUCCEEDED}
    assert conductor.rt.driver_for("h2").inventory().empty
    report = conductor.rt.driver_for("h1").host_report()
    assert any(r.id == "cf-made-by-someone" and r.instance_uuid is None for r in report.resources)


def test_a_failed_resize_repaired_by_hand_ends_clean(conductor):
    """The story from the issue: the resize's revert fails, the operator marks it
    reverted, the instance's guest exists only as the resize source copy.
    Reconcile restores it; destroy then leaves nothing on any host."""
    uuid_ = _spawn(conductor, "db1")
    failed_resize_marked_reverted(conductor, "db1")
    found = reconcile.audit(conductor)
    assert [(f.what, f.action["action"] if f.action else None) for f in found.findings] == [
        ("guest-missing", "restore_kept_copy")
    ], [f.line() for f in found.findings]
    assert all(a.state == operations.SUCCEEDED for a in reconcile.apply(conductor, found))
    assert reconcile.audit(conductor).findings == []
    with conductor.db.session() as s:
        inst = instances.get(s, uuid_)
        assert (inst.vm_state, inst.power_state, inst.host) == ("stopped", "shutdown", "h1")
    assert conductor.run(conductor.submit_destroy("db1")).state == operations.SUCCEEDED
    leaks = conductor.leaks()
    assert leaks["claims"] == [] and all(inv.empty for inv in leaks["hosts"].values()), leaks


def test_busy_and_failed_instances_are_left_to_their_operation(conductor):
    """An instance a FAILED operation holds is reported for repair, never changed."""
    for f in ("power_on:execute:fail", "define_guest:revert:fail"):
        conductor.rt.faults.arm(f)
    op = conductor.submit_spawn(SpawnRequest(name="bad", flavor="m1.small", image="cirros"))
    assert conductor.run(op).state == operations.FAILED
    conductor.rt.faults.clear()
    found = reconcile.audit(conductor)
    assert [f.what for f in found.findings] == ["needs-repair"]
    assert found.actionable == [] and f"operation {op} FAILED" in found.findings[0].why


# -- through the CLI, killed mid-apply ------------------------------------------
KILL_STEPS = [
    "remove_from_host",
    "record_power_state",
    "mark_guest_missing",
    "release_stale_claim",
    "recount_usage",
    "take_hold",
    "release_hold",
]


@pytest.fixture
def sqlite_only(sqlite_url):
    from tests.conftest import clean

    clean(sqlite_url)
    return sqlite_url


@pytest.mark.integration
@pytest.mark.parametrize("step", KILL_STEPS)
def test_apply_killed_at_a_step_and_run_again_converges(tmp_path, sqlite_only, step):
    state = tmp_path / "state"
    calm = write_conf(tmp_path / "calm.conf", state, sqlite_only)
    crash = write_conf(tmp_path / "crash.conf", state, sqlite_only, f"[fake]\nfaults = {step}:execute:kill:after\n")
    c = Conductor(config.load([str(calm)]))
    try:
        c.add_host("h1", vcpus=16, ram_mb=32768, disk_gb=500)
        _plant(c)
    finally:
        c.close()
    died = run_cli(crash, "reconcile", "--apply")
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stdout, died.stderr)
    again = run_cli(calm, "reconcile", "--apply", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    out = json.loads(again.stdout)
    assert out["after"]["findings"] and not [f for f in out["after"]["findings"] if f["action"]]
    assert {a["state"] for a in out["applied"]} <= {operations.SUCCEEDED}
    final = run_cli(calm, "reconcile", "--json")
    assert sorted(f["what"] for f in json.loads(final.stdout)["findings"]) == ["foreign-guest", "guest-missing"], (
        final.stdout
    )
    with Conductor(config.load([str(calm)])) as c2:
        with c2.db.session() as s:
            open_ops = s.scalars(sa.select(Operation).where(Operation.state.in_(operations.ACTIVE_STATES))).all()
            assert open_ops == []
            assert s.scalar(sa.select(sa.func.count()).select_from(Claim)) == 2
        assert c2.rt.driver_for("h2").inventory().empty


@pytest.mark.integration
def test_mark_reverted_says_what_the_hosts_still_hold(tmp_path, sqlite_only):
    state = tmp_path / "state"
    calm = write_conf(tmp_path / "calm.conf", state, sqlite_only)
    faulty = write_conf(
        tmp_path / "faulty.conf",
        state,
        sqlite_only,
        "[fake]\nfaults = finish_migration:execute:fail:after,migrate_disk_and_power_off:revert:fail\n",
    )
    for h in ("h1", "h2"):
        assert run_cli(calm, "hosts", "add", h, "--vcpus", "8", "--ram-mb", "16384", "--disk-gb", "100").returncode == 0
    assert run_cli(calm, "spawn", "db1", "--flavor", "m1.small", "--image", "cirros", "--host", "h1").returncode == 0
    failed = run_cli(faulty, "resize", "db1", "--flavor", "m1.large", "--target-host", "h2")
    assert failed.returncode == 3, failed.stdout + failed.stderr  # needs repair
    op_id = json.loads(run_cli(calm, "ops", "list", "--json").stdout)[0]["id"]
    marked = run_cli(calm, "ops", "mark-reverted", op_id)
    assert marked.returncode == 0, marked.stderr
    assert "still disagree" in marked.stdout
    assert "h1         guest-missing" in marked.stdout and "restore the kept copy" in marked.stdout


# -- resume decided from the hypervisor and the configured direction -------------
@pytest.mark.integration
@pytest.mark.parametrize("killed_after,expect", [("define_guest", "revert"), ("power_on", "forward")])
def test_configured_revert_unless_the_hypervisor_shows_the_step_done(tmp_path, sqlite_only, killed_after, expect):
    """spawn:revert is configured. Killed while power_on had not started the
    guest, resume reverts; killed after it did (the probe shows it running),
    resume goes forward whatever the configuration."""
    state = tmp_path / "state"
    calm = write_conf(tmp_path / "calm.conf", state, sqlite_only, "resume_direction = spawn:revert\n")
    step = {"define_guest": "power_on:execute:kill:before", "power_on": "power_on:execute:kill:after"}[killed_after]
    crash = write_conf(tmp_path / "crash.conf", state, sqlite_only, f"[fake]\nfaults = {step}\n")
    assert run_cli(calm, "hosts", "add", "h1", "--vcpus", "8", "--ram-mb", "16384", "--disk-gb", "100").returncode == 0
    died = run_cli(crash, "spawn", "vm1", "--flavor", "m1.small", "--image", "cirros")
    assert died.returncode == -signal.SIGKILL, died.stderr
    (plan,) = json.loads(run_cli(calm, "resume", "--dry-run", "--json").stdout)
    assert plan["direction"] == expect, plan
    if expect == "revert":
        assert "configured" in plan["why"] and plan["probes"][0]["done"] is False, plan
    else:
        assert plan["probes"][0]["done"] is True, plan
    resumed = run_cli(calm, "resume", "--json")
    (outcome,) = json.loads(resumed.stdout)
    assert outcome["state"] == ("REVERTED" if expect == "revert" else "SUCCEEDED"), outcome
    inv = json.loads(run_cli(calm, "inventory", "--json").stdout)
    assert (inv["hosts"]["h1"]["guests"] == []) == (expect == "revert"), inv


def test_a_bad_resume_direction_is_a_configuration_error(tmp_path, sqlite_only):
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", sqlite_only, "resume_direction = spawn:sideways\n")
    out = run_cli(conf, "resume")
    assert out.returncode == 2 and "resume_direction: spawn:sideways" in out.stderr, out.stderr


def test_a_stray_copy_is_not_removed_once_an_operation_holds_the_instance(conductor):
    """The audit saw vm1's disk on h2 as a stray; before --apply a live
    migration to h2 took vm1. The removal runs under vm1's hold, so it is
    skipped and the migration keeps what it made there."""
    from drivers.base import DiskKind, DiskSpec

    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    uuid_ = _spawn(conductor, "vm1")
    conductor.rt.driver_for("h2").create_disk(uuid_, DiskSpec(DiskKind.EPHEMERAL, 1024))
    found = reconcile.audit(conductor)
    assert [(f.what, f.host, f.action["action"]) for f in found.actionable] == [
        ("stray-copy", "h2", "remove_from_host")
    ]
    migration = conductor.submit("live_migration", "vm1", target_host="h2")
    (skipped,) = reconcile.apply(conductor, found)
    assert skipped.state == "SKIPPED" and "busy" in skipped.error
    assert conductor.rt.driver_for("h2").inventory().disks  # untouched
    assert conductor.run(migration).state == operations.SUCCEEDED
    assert reconcile.audit(conductor).findings == []


def test_a_stray_copy_whose_home_was_not_probed_is_left_alone(conductor):
    from drivers.base import DiskKind, DiskSpec

    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    uuid_ = _spawn(conductor, "vm1")
    conductor.rt.driver_for("h2").create_disk(uuid_, DiskSpec(DiskKind.EPHEMERAL, 1024))
    (f,) = reconcile.audit(conductor, host="h2").findings
    assert f.what == "stray-copy" and f.action is None and "h1 was not probed" in f.why


def test_a_guest_whose_root_disk_is_gone_is_reported(conductor):
    uuid_ = _spawn(conductor, "vm1")
    with conductor.rt.driver_for("h1").state.change() as st:
        del st["disks"][next(p for p, d in st["disks"].items() if d["instance"] == uuid_ and d["kind"] == "root")]
    (f,) = reconcile.audit(conductor).findings
    assert (f.what, f.instance_uuid, f.action) == ("root-disk-missing", uuid_, None)
