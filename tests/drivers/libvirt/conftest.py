"""Fixtures of the libvirt driver's tests.

What a tier needs and is missing (qemu-img; for real guests also the emulator,
a running libvirtd and the built test guest) skips its tests locally; with
CI=true it fails them, naming the script that provides it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conductor import config
from conductor.api import Conductor
from tests.conftest import IN_CI, REPO, clean, write_conf

SCRIPTS = REPO / "scripts" / "libvirt"
TEST_URI = "test:///default"
SYSTEM_URI = "qemu:///system"
GUEST_DIR = Path(os.environ.get("COMPUTEFLOW_TEST_GUEST_DIR", "/var/tmp/computeflow-guest"))


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the tiers that use the real daemons (`integration` here):
    scripts/test.sh runs them apart, in one process, and the test:///default
    tier (in-process, no daemon) with the parallel rest of the suite."""
    for item in items:
        if item.nodeid.startswith("tests/drivers/libvirt/") and item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.libvirt_daemons)


def missing(what: str, fix: str) -> None:
    msg = f"{what} (run {fix})"
    if IN_CI:
        pytest.fail(msg + " [CI=true: a missing prerequisite is a failure]")
    pytest.skip(msg)


def poll(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Return predicate()'s first truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        pause.wait(interval)


@pytest.fixture(scope="session")
def qemu_img() -> None:
    if shutil.which("qemu-img") is None:
        missing("qemu-img not installed", f"{SCRIPTS}/install.sh")


def close_drivers(c: Conductor) -> None:
    """Conductor.close leaves drivers be; close their libvirt connections."""
    for drv in list(c.rt._drivers.values()):
        drv.cleanup_host()


def remove_owned_domains(drv) -> None:
    """Whatever a failed test left on the hypervisor for this driver's host."""
    for instance_uuid in drv.list_instance_uuids():
        drv.power_off(instance_uuid)
        drv.undefine_guest(instance_uuid)


@pytest.fixture
def host_name() -> str:
    """A host name of its own per test: test:///default's state is shared by the process."""
    return f"lv-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_conductor(tmp_path, sqlite_url) -> Iterator[Callable[..., Conductor]]:
    """Conductors on a clean SQLite database whose config adds `extra`."""
    made: list[Conductor] = []

    def make(extra: str, state_path: Path | None = None) -> Conductor:
        clean(sqlite_url)
        conf_file = write_conf(
            tmp_path / f"computeflow-{len(made)}.conf", state_path or tmp_path / "state", sqlite_url, extra
        )
        c = Conductor(config.load([str(conf_file)]))
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            for drv in c.rt._drivers.values():
                if drv.name == "libvirt":
                    remove_owned_domains(drv)
        finally:
            close_drivers(c)
            c.close()


# -- the real-QEMU tier -----------------------------------------------------
@pytest.fixture(scope="session")
def qemu_system(qemu_img) -> str:
    """qemu:///system answering, with the emulator installed."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("virsh") is None:
        missing("qemu-system-x86_64 or virsh not installed", f"{SCRIPTS}/install.sh")
    probe = subprocess.run(["virsh", "-c", SYSTEM_URI, "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        missing(f"libvirtd not answering at {SYSTEM_URI}: {probe.stderr.strip()}", f"{SCRIPTS}/start_daemon.sh as root")
    return SYSTEM_URI


@pytest.fixture(scope="session")
def test_guest() -> tuple[str, str]:
    """(kernel, initrd) of the tiny guest build_guest.sh makes."""
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.gz"
    if not (kernel.is_file() and initrd.is_file()):
        missing(f"test guest not built in {GUEST_DIR}", f"{SCRIPTS}/build_guest.sh {GUEST_DIR}")
    return str(kernel), str(initrd)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory QEMU can reach when it runs as libvirt-qemu (pytest's own
    tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="computeflow-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
