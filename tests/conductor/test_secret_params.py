"""Secret parameters of catalogue operations (set-admin-password, inject-file)
reach the driver and nowhere else: not the database (full dump during a
crashed operation and after), not the log, not any CLI output."""

from __future__ import annotations

import hashlib
import json
import signal

from drivers.fake_state import HostStateFile
from tests.conductor.test_secrets import full_dump
from tests.conftest import run_cli, write_conf

PASSWORD = "c0rrect-h0rse-battery-staple"
CONTENTS = "ssh-ed25519 AAAA-this-key-is-secret operator@example\n"


def test_secret_params_never_stored_logged_or_printed(tmp_path, crash_db_url):
    state = tmp_path / "state"
    conf = write_conf(tmp_path / "c.conf", state, crash_db_url)
    outputs = [
        run_cli(conf, "hosts", "add", "h1", "--vcpus", "4", "--ram-mb", "8192", "--disk-gb", "100"),
        run_cli(conf, "spawn", "vm1", "--flavor", "m1.tiny", "--image", "cirros"),
    ]
    # Killed after the password reached the guest: the resume still needs the secret.
    crash = write_conf(
        tmp_path / "crash.conf", state, crash_db_url, "[fake]\nfaults = set_admin_password:execute:kill:after\n"
    )
    died = run_cli(crash, "--debug", "set-admin-password", "vm1", "--password-file", "-", stdin=PASSWORD + "\n")
    assert died.returncode == -signal.SIGKILL, died.stderr
    outputs.append(died)
    during = full_dump(crash_db_url)
    assert "secrets:" in during
    outputs.append(run_cli(conf, "--debug", "resume"))
    # A failing inject-file: the error path formats exceptions and parameters.
    (tmp_path / "key").write_text(CONTENTS)
    failing = write_conf(tmp_path / "fail.conf", state, crash_db_url, "[fake]\nfaults = mark_done:execute:fail\n")
    outputs.append(
        run_cli(
            failing,
            "--debug",
            "inject-file",
            "vm1",
            "--path",
            "/root/.ssh/authorized_keys",
            "--contents-file",
            str(tmp_path / "key"),
        )
    )
    assert outputs[-1].returncode == 1
    outputs.append(
        run_cli(
            conf, "inject-file", "vm1", "--path", "/root/.ssh/authorized_keys", "--contents-file", str(tmp_path / "key")
        )
    )
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    outputs.append(run_cli(conf, "ops", "list", "--json"))
    for op in json.loads(outputs[-1].stdout):
        outputs.append(run_cli(conf, "ops", "show", op["id"], "--json", "--transitions"))
    after = full_dump(crash_db_url)

    for secret in (PASSWORD, CONTENTS.strip()):
        assert secret not in during and secret not in after
        for r in outputs:
            assert secret not in r.stdout and secret not in r.stderr
        log = (state / "computeflow.log").read_text()
        assert log and secret not in log
    assert "secrets:" not in after
    (guest,) = HostStateFile(str(state / "fake"), "h1").read()["guests"].values()
    assert guest["admin_password_sha256"] == hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert guest["files"]["/root/.ssh/authorized_keys"] == hashlib.sha256(CONTENTS.encode()).hexdigest()
