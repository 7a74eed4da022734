"""The fake hypervisor: state on disk, idempotent calls, faults."""

import os
import signal
import subprocess
import sys

import pytest

from drivers.base import DiskKind, DiskSpec, Flavor, GuestSpec, Image, PowerState, Vif
from drivers.errors import GuestNotFound, InvalidGuestState
from drivers.fake import FakeDriver
from drivers.faults import BadFaultSpec, Fault, FaultPlan
from drivers.errors import InjectedFault

IMAGE = Image("cirros", "raw", 16)
FLAVOR = Flavor("t", 1, 512, 1)


def build_guest(d: FakeDriver, uuid: str = "u1") -> None:
    d.ensure_base_image(IMAGE)
    disk = d.create_disk(uuid, DiskSpec(DiskKind.ROOT, 1024, IMAGE))
    d.plug_vif(uuid, Vif("p1", "fa:16:3e:00:00:01"))
    d.define_guest(GuestSpec(uuid, "vm", FLAVOR, (disk,), (Vif("p1", "m"),)))
    d.power_on(uuid)


def test_every_mutation_is_idempotent(tmp_path):
    d = FakeDriver("h1", str(tmp_path))
    build_guest(d)
    first = d.inventory()
    build_guest(d)  # the whole sequence again: nothing new
    assert d.inventory() == first and d.get_info("u1").state is PowerState.RUNNING
    for undo in (
        lambda: d.power_off("u1"),
        lambda: d.undefine_guest("u1"),
        lambda: d.unplug_vif("u1", "p1"),
        lambda: d.delete_disk("u1", DiskKind.ROOT),
    ):
        undo()
        undo()
    assert d.inventory().empty


def test_state_survives_a_new_process(tmp_path):
    build_guest(FakeDriver("h1", str(tmp_path)))
    again = FakeDriver("h1", str(tmp_path))
    assert again.list_instance_uuids() == ["u1"]
    assert again.get_info("u1").state is PowerState.RUNNING


def test_guest_rules(tmp_path):
    d = FakeDriver("h1", str(tmp_path))
    with pytest.raises(GuestNotFound):
        d.power_on("nope")
    build_guest(d)
    with pytest.raises(InvalidGuestState):
        d.undefine_guest("u1")  # running


def test_hosts_are_separate(tmp_path):
    build_guest(FakeDriver("h1", str(tmp_path)))
    assert FakeDriver("h2", str(tmp_path)).inventory().empty


def test_events_reach_listeners(tmp_path):
    d = FakeDriver("h1", str(tmp_path))
    build_guest(d)
    seen = []
    d.register_event_listener(seen.append)
    d.simulate_guest_stopped("u1")
    assert [(e.instance_uuid, e.power_state) for e in seen] == [("u1", PowerState.SHUTDOWN)]


@pytest.mark.parametrize("spec", ["x", "a:b:fail", "a:execute:explode", "a:execute:fail:later"])
def test_bad_fault_specs_are_rejected(spec):
    with pytest.raises(BadFaultSpec):
        Fault.parse(spec)


def test_fail_once_fires_once():
    plan = FaultPlan(["s:execute:fail-once"])
    with pytest.raises(InjectedFault):
        plan.checkpoint("s", "execute", "before")
    plan.checkpoint("s", "execute", "before")


def test_kill_fault_kills_the_process():
    code = (
        "from drivers.faults import FaultPlan; "
        "FaultPlan(['s:revert:kill:after']).checkpoint('s', 'revert', 'after'); print('alive')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert r.returncode == -signal.SIGKILL and "alive" not in r.stdout
