"""The admin password reaches the driver and nowhere else: not the database
(full dump, during and after the operation), not the logs, not CLI output."""

from __future__ import annotations

import hashlib
import json
import signal

import sqlalchemy as sa

from drivers.fake_state import HostStateFile
from persistence.session import Database
from tests.conftest import run_cli, write_conf

PASSWORD = "Tr0ub4dor&3-never-in-clear"


def full_dump(url: str) -> str:
    db = Database(url)
    md = sa.MetaData()
    md.reflect(db.engine)
    out = []
    with db.engine.connect() as c:
        for t in md.sorted_tables:
            for row in c.execute(sa.select(t)):
                out.append(f"{t.name}: {row!r}")
    db.dispose()
    return "\n".join(out)


def test_password_never_stored_logged_or_printed(tmp_path, db_url):
    state = tmp_path / "state"
    conf = write_conf(tmp_path / "c.conf", state, db_url)
    outputs = [run_cli(conf, "hosts", "add", "h1", "--vcpus", "4", "--ram-mb", "8192", "--disk-gb", "100")]
    # Kill the first attempt after the guest was defined: the secret must survive
    # (encrypted) for the resume, and still never be in clear text.
    crash = write_conf(tmp_path / "crash.conf", state, db_url, "[fake]\nfaults = power_on:execute:kill\n")
    died = run_cli(
        crash,
        "--debug",
        "spawn",
        "vm1",
        "--flavor",
        "m1.tiny",
        "--image",
        "cirros",
        "--admin-password-file",
        "-",
        stdin=PASSWORD + "\n",
    )
    assert died.returncode == -signal.SIGKILL
    outputs.append(died)
    during = full_dump(db_url)
    assert "secrets:" in during  # the ciphertext is there, waiting for the resume
    outputs.append(run_cli(conf, "--debug", "resume"))
    outputs.append(run_cli(conf, "ops", "list", "--json"))
    op_id = json.loads(outputs[-1].stdout)[0]["id"]
    outputs.append(run_cli(conf, "ops", "show", op_id, "--json", "--transitions"))
    assert json.loads(outputs[-1].stdout)["state"] == "SUCCEEDED"
    # A failing spawn with a password (the error path formats exceptions).
    failing = write_conf(tmp_path / "fail.conf", state, db_url, "[fake]\nfaults = define_guest:execute:fail\n")
    outputs.append(
        run_cli(
            failing, "--debug", "spawn", "vm2", "--flavor", "m1.tiny", "--image", "cirros", "--admin-password", PASSWORD
        )
    )
    after = full_dump(db_url)

    assert PASSWORD not in during and PASSWORD not in after
    assert "secrets:" not in after  # purged when the operations ended
    for r in outputs:
        assert PASSWORD not in r.stdout and PASSWORD not in r.stderr
    log = (state / "computeflow.log").read_text()
    assert log and PASSWORD not in log
    # ...and yet the guest got it.
    guests = HostStateFile(str(state / "fake"), "h1").read()["guests"]
    (guest,) = guests.values()
    assert guest["admin_password_sha256"] == hashlib.sha256(PASSWORD.encode()).hexdigest()
