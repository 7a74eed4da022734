"""Messages an operator meets when naming an operation, and output piped into
a reader that leaves early."""

from __future__ import annotations

import subprocess
import sys
import uuid

from persistence import operations
from persistence.models import Operation
from tests.conftest import REPO, clean, run_cli, write_conf


def _op(c, op_id: str) -> None:
    with c.db.session() as s:
        operations.create(s, op_id, "spawn", str(uuid.uuid4()), {}, 1, None, 30)
        s.get(Operation, op_id).state = operations.SUCCEEDED


def test_short_ambiguous_and_unknown_ids_are_told_apart(conductor, conf_file):
    _op(conductor, "abcd0000-0000-4000-8000-000000000001")
    _op(conductor, "abcd1111-0000-4000-8000-000000000002")
    for arg, expect in (
        ("abc", "too short: give at least 4 characters"),
        ("abcd", "is ambiguous: it matches abcd0000-0000-4000-8000-000000000001, abcd1111-0000-4000-8000-000000000002"),
        ("ffff", "unknown operation 'ffff'"),
    ):
        out = run_cli(conf_file, "ops", "show", arg)
        assert out.returncode == 2 and expect in out.stderr, (arg, out.stderr)
    out = run_cli(conf_file, "ops", "show", "abcd1")
    assert out.returncode == 0 and "abcd1111" in out.stdout


def test_a_reader_that_leaves_early_is_no_traceback(tmp_path, sqlite_url):
    clean(sqlite_url)
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", sqlite_url)
    p = subprocess.Popen(
        [sys.executable, "-m", "conductor.cli", "--config-file", str(conf), "flavors", "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()  # the reader (`head`) is gone before the first line is written
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
