"""The crash matrices' one move: run a CLI command that a fault SIGKILLs at a
chosen point, then `computeflow resume` from a new process.

Every matrix (spawn, catalogue, moves, power, live migration) calls
`kill_then_resume` and then asserts its own end state. The resume's plan from
`resume --dry-run` is checked against what the resume did where the matrix
asks for it (tests/integration/resume_plan.py says where and why).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_conf
from tests.integration import resume_plan


def fault_conf(faults: list[str] | tuple[str, ...], fake_extra: str = "") -> str:
    """The [fake] section arming `faults` (plus other [fake] options)."""
    return "[fake]\n" + fake_extra + (f"faults = {','.join(faults)}\n" if faults else "")


def kill_then_resume(
    tmp_path: Path,
    calm: Path,
    url: str,
    cli_args: list[str],
    faults: list[str],
    *,
    fake_extra: str = "",
    check_plan: bool = False,
) -> subprocess.CompletedProcess:
    """Run `cli_args` with `faults` armed (one must kill the process), then
    resume with the calm configuration; returns the resume's result."""
    state = Path(
        next(line.split("=", 1)[1].strip() for line in calm.read_text().splitlines() if line.startswith("state_path"))
    )
    crash = write_conf(tmp_path / "crash.conf", state, url, fault_conf(faults, fake_extra))
    died = run_cli(crash, *cli_args)
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stdout, died.stderr)
    planned = resume_plan.dry_run(calm) if check_plan else None
    resumed = run_cli(calm, "resume")
    assert resumed.returncode in (0, 1), resumed.stderr
    resume_plan.assert_followed(calm, planned)
    return resumed


_BACKENDS = ("sqlite", "postgresql")


def alternating(cells: list, name=str) -> list:
    """Each crash cell once, on SQLite and PostgreSQL in turn, for the
    `crash_db_url` fixture (parametrize it indirectly with these).

    The spawn matrix runs every cell on both backends: it proves the two write
    paths (PostgreSQL's batched commits, SQLite's) against every kind of step
    boundary. The other matrices add operations, not write paths, so every
    cell runs once, half on each backend; the order mixes them so that each
    step is killed on both (before on one, after on the other)."""
    out = []
    for i, cell in enumerate(cells):
        values = cell if isinstance(cell, tuple) else (cell,)
        backend = _BACKENDS[(i + i // 2) % 2]
        out.append(pytest.param(*values, backend, id="-".join([backend, *(name(v) for v in values)])))
    return out
