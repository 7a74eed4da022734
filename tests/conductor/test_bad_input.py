"""Bad input: one clear line, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from persistence.session import Database
from tests.conftest import MUTABLE_TABLES, run_cli, write_conf


def snapshot(url: str, state_dir) -> dict:
    db = Database(url)
    with db.engine.connect() as c:
        rows = {t: sorted(map(repr, c.execute(sa.text(f"SELECT * FROM {t}")).all())) for t in MUTABLE_TABLES}
    db.dispose()
    fake = (
        sorted((p.name, p.read_text()) for p in (state_dir / "fake").glob("*.json"))
        if (state_dir / "fake").exists()
        else []
    )
    return {"db": rows, "fake": fake}


@pytest.fixture
def env(tmp_path, db_url):
    conf = write_conf(tmp_path / "c.conf", tmp_path / "state", db_url)
    assert run_cli(conf, "hosts", "add", "small", "--vcpus", "2", "--ram-mb", "4096", "--disk-gb", "40").returncode == 0
    assert run_cli(conf, "spawn", "taken", "--flavor", "m1.tiny", "--image", "cirros").returncode == 0
    return conf, db_url, tmp_path / "state"


def assert_refused(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("computeflow: error: "), result.stderr
    for f in fragments:
        assert f in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["spawn", "vm", "--flavor", "m9.nope", "--image", "cirros"], ["unknown flavor 'm9.nope'"]),
        (["spawn", "vm", "--flavor", "m1.tiny", "--image", "nope"], ["unknown image 'nope'"]),
        (["spawn", "vm", "--flavor", "m1.tiny", "--image", "cirros", "--host", "h9"], ["unknown host 'h9'"]),
        (["spawn", "taken", "--flavor", "m1.tiny", "--image", "cirros"], ["'taken' already exists"]),
        (
            ["spawn", "vm", "--flavor", "m1.large", "--image", "cirros", "--host", "small"],
            ["host small lacks capacity", "needs 4 vCPU, 1 free"],
        ),
        (["spawn", "vm", "--flavor", "m1.large", "--image", "cirros"], ["no host has room"]),
        (["spawn", "bad name!", "--flavor", "m1.tiny", "--image", "cirros"], ["invalid instance name"]),
        (["destroy", "ghost"], ["unknown instance 'ghost'"]),
        (["hosts", "add", "small", "--vcpus", "1", "--ram-mb", "1", "--disk-gb", "1"], ["host 'small' already exists"]),
        (["hosts", "add", "h2", "--vcpus", "0", "--ram-mb", "1", "--disk-gb", "1"], ["vcpus must be between 1 and"]),
        (
            ["hosts", "add", "h2", "--vcpus", "1", "--ram-mb", str(2**40), "--disk-gb", "1"],
            ["ram_mb must be between 1 and"],
        ),
        (
            ["hosts", "add", "h2", "--vcpus", "1", "--ram-mb", "1", "--disk-gb", "1", "--driver", "xen"],
            ["unknown driver 'xen'"],
        ),
    ],
)
def test_request_errors_change_nothing(env, args, fragments):
    conf, url, state = env
    before = snapshot(url, state)
    assert_refused(run_cli(conf, *args), *fragments)
    assert snapshot(url, state) == before


def test_busy_instance_is_refused_naming_the_holder(env):
    conf, url, state = env
    db = Database(url)
    with db.engine.begin() as c:
        c.execute(sa.text("UPDATE instances SET held_by = 'op-123' WHERE name = 'taken'"))
    db.dispose()
    before = snapshot(url, state)
    assert_refused(run_cli(conf, "destroy", "taken"), "busy", "op-123")
    assert snapshot(url, state) == before


@pytest.mark.parametrize(
    "content,fragments",
    [
        ("[DEFAULT\nstate_path = x\n", ["configuration"]),
        ("[DEFAULT]\npreallocate_images = lots\n", ["preallocate_images", "lots"]),
        (
            "[database]\nconnection = postgresql+psycopg2://root@127.0.0.1:1/none\n",
            ["cannot reach the database", "127.0.0.1:1"],
        ),
        ("[database]\nconnection = not a url\n", ["cannot reach the database"]),
        ("[database]\nconnection = postgresql+psycopg2://root:hunter2@127.0.0.1:1/none\n", ["***"]),
        ("[fake]\nfaults = define_guest:sometime:fail\n", ["fault 'define_guest:sometime:fail'"]),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, content, fragments):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path}/state\n[conductor]\nlog_file =\n" + content
        if not content.startswith("[DEFAULT")
        else content
    )
    r = run_cli(conf, "hosts", "add", "h1", "--vcpus", "1", "--ram-mb", "1", "--disk-gb", "1")
    assert_refused(r, *fragments)
    assert "hunter2" not in r.stderr + r.stdout
    assert not (tmp_path / "state" / "computeflow.sqlite").exists()


def test_debug_shows_the_traceback(env):
    conf, _, _ = env
    r = run_cli(conf, "--debug", "spawn", "vm", "--flavor", "m9.nope", "--image", "cirros")
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["ops", "list"],
        ["instances", "list"],
        ["db", "version"],
        ["hosts", "add", "h1", "--vcpus", "1", "--ram-mb", "1", "--disk-gb", "1"],
    ],
)
@pytest.mark.parametrize("where", ["nonexistent/dir/x.sqlite", "x.sqlite"])
def test_a_missing_sqlite_database_is_not_created_behind_the_operators_back(tmp_path, command, where):
    url = f"sqlite:///{tmp_path}/{where}"
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n[database]\nconnection = {url}\n")
    assert_refused(run_cli(conf, *command), f"no database at {url}", "computeflow db upgrade")
    assert not (tmp_path / where.split("/")[0]).exists()


def test_db_upgrade_creates_a_database_the_configuration_names(tmp_path):
    url = f"sqlite:///{tmp_path}/new/dir/x.sqlite"
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n[database]\nconnection = {url}\n")
    r = run_cli(conf, "db", "upgrade")
    assert r.returncode == 0 and f"created {url}" in r.stdout, (r.stdout, r.stderr)
    r = run_cli(conf, "ops", "list")
    assert r.returncode == 0, r.stderr


def test_the_embedded_default_database_is_created_on_first_use(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n")
    r = run_cli(conf, "ops", "list")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "state" / "computeflow.sqlite").exists()


@pytest.mark.parametrize(
    "content,expected",
    [
        ("[conductor]\nworkers = abc\n", "[conductor] workers = 'abc'"),
        ("[conductor]\nworkers = 0\n", "[conductor] workers = '0'"),
        ("[fake]\ndeliver_vif_events = maybe\n", "[fake] deliver_vif_events = 'maybe'"),
        ("[DEFAULT]\npreallocate_images = lots\n", "[DEFAULT] preallocate_images = 'lots'"),
    ],
)
def test_a_bad_option_value_names_section_option_value_and_what_is_expected(tmp_path, content, expected):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n" + content)
    r = run_cli(conf, "ops", "list")
    assert_refused(r, expected, "expected ", str(conf))
    assert "LocationInfo" not in r.stderr and "Locations." not in r.stderr


@pytest.mark.parametrize(
    "spec,fragments",
    [
        ("nosuchstep:execute:fail", ["fault 'nosuchstep:execute:fail'", "no operation has a step 'nosuchstep'"]),
        ("defne_guest:execute:fail", ["no operation has a step 'defne_guest'", "define_guest"]),
        ("plug_vif_x:execute:fail", ["no operation has a step 'plug_vif_x'", "plug_vif_<n>"]),
    ],
)
def test_a_fault_at_a_step_no_operation_has_is_refused(tmp_path, spec, fragments):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n[fake]\nfaults = {spec}\n")
    assert_refused(run_cli(conf, "ops", "list"), *fragments)
    assert not (tmp_path / "state" / "computeflow.sqlite").exists()


def test_faults_that_cannot_fire_in_the_operation_are_one_warning(tmp_path):
    def spawn(faults: str, name: str):
        conf = tmp_path / "c.conf"
        conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n[fake]\nfaults = {faults}\n")
        return run_cli(conf, "spawn", name, "--flavor", "m1.tiny", "--image", "cirros")

    conf = tmp_path / "h.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n")
    assert run_cli(conf, "hosts", "add", "h1", "--vcpus", "8", "--ram-mb", "8192", "--disk-gb", "80").returncode == 0
    r = spawn("power_on_guest:execute:fail, snapshot_guest:execute:fail", "vm1")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("computeflow: warning: "), r.stderr
    assert "power_on_guest" in lines[0] and "spawn" in lines[0]
    r = spawn("power_on:execute:fail", "vm2")  # spawn's own power_on step: it fires
    assert r.returncode == 1 and "warning" not in r.stderr, (r.stdout, r.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["spawn", "vm", "--flavor", "m1.tiny", "--image", "cirros", "--host", "h2"],
        ["migrate", "taken", "--target-host", "h2"],
        ["live-migration", "taken", "--target-host", "h2"],
    ],
)
def test_every_placement_refuses_a_destination_marked_down_the_same_way(env, args):
    conf, url, state = env
    assert run_cli(conf, "hosts", "add", "h2", "--vcpus", "8", "--ram-mb", "8192", "--disk-gb", "80").returncode == 0
    assert run_cli(conf, "hosts", "set-down", "h2").returncode == 0
    before = snapshot(url, state)
    assert_refused(run_cli(conf, *args), "host h2 is down")
    assert snapshot(url, state) == before


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "taken", "--target-host", "small"],
        ["live-migration", "taken", "--target-host", "small"],
    ],
)
def test_every_move_refuses_the_source_host_the_same_way(env, args):
    conf, url, state = env
    before = snapshot(url, state)
    assert_refused(run_cli(conf, *args), "instance taken is already on small: choose another host")
    assert snapshot(url, state) == before
