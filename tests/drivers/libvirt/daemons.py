"""The two libvirt daemons of the real-QEMU tier, stopped and started the way
scripts/libvirt/ starts them: SIGTERM to the pid in the daemon's pid file, wait
until the process is gone, then the project's own start script again.

`system`: the daemon of scripts/libvirt/start_daemon.sh (qemu:///system, pid in
/run/libvirtd.pid); `second`: the one of start_second_daemon.sh (its state
directory holds its pid file). Stopping a daemon leaves its QEMU processes
running; a new daemon takes them over.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.drivers.libvirt.conftest import SCRIPTS, poll

SECOND_DIR = os.environ.get("COMPUTEFLOW_TEST_SECOND_DAEMON_DIR", "/var/tmp/computeflow-libvirt2")


@dataclass(frozen=True)
class Daemon:
    name: str
    pid_file: Path
    start_command: tuple[str, ...]

    def pid(self) -> int | None:
        """The running daemon's pid, if its pid file names a live libvirtd."""
        try:
            pid = int(self.pid_file.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return None
        return pid if comm == "libvirtd" else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: as an init system would; SIGKILL: a crash) and wait until it is
        gone. A SIGTERMed daemon waits up to 30 s for calls it is serving (a migration)."""
        pid = self.pid()
        assert pid is not None, f"the {self.name} libvirtd is not running ({self.pid_file})"
        os.kill(pid, sig)
        poll(lambda: not os.path.exists(f"/proc/{pid}"), 60, f"the {self.name} libvirtd to exit")

    def start(self) -> None:
        """Start it with its script, which returns once the daemon answers."""
        done = subprocess.run(list(self.start_command), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def ensure_running(self) -> None:
        if self.pid() is None:
            self.start()


SYSTEM = Daemon("system", Path("/run/libvirtd.pid"), (str(SCRIPTS / "start_daemon.sh"),))
SECOND = Daemon("second", Path(SECOND_DIR) / "libvirtd.pid", (str(SCRIPTS / "start_second_daemon.sh"), SECOND_DIR))


def qemu_pid(daemon: Daemon, instance_uuid: str) -> int:
    """The pid of the guest's QEMU process, as its daemon recorded it."""
    run = Path("/run/libvirt") if daemon is SYSTEM else Path(SECOND_DIR) / "run"
    return int((run / "qemu" / f"cf-{instance_uuid}.pid").read_text())
