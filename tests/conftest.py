"""Shared fixtures: one fresh database per backend per test session, a clean
slate per test, and conductors configured through real config files.

Server databases are used for real. When one is unreachable the tests that
need it are skipped locally, but with CI=true its absence is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conductor import config
from conductor.api import Conductor
from persistence import schema
from persistence.session import Database
from tests import cli_zygote

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVERS = {
    "postgresql": os.environ.get("COMPUTEFLOW_TEST_PG", "postgresql+psycopg2://root@127.0.0.1:5432/test"),
    "mysql": os.environ.get("COMPUTEFLOW_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
# Rows of these tables are test data; flavors and images are seeded by migrations.
MUTABLE_TABLES = (
    "flow_log",
    "secrets",
    "claims",
    "host_slots",
    "operations",
    "instance_events",
    "instances",
    "hosts",
    "atomdetails",
    "flowdetails",
    "logbooks",
)
_SESSION_TAG = f"cf_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _unreachable(what: str, error: object) -> None:
    """A server the test needs is missing: skipped on a developer's machine
    (scripts/test.sh starts them all), a failure under CI=true."""
    msg = f"{what}: {error}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: a missing server is a failure)")
    pytest.skip(msg)


def _server_database(kind: str) -> Iterator[str]:
    """Create a private database on the server for this session; drop it after."""
    admin_url = sa.make_url(SERVERS[kind])
    admin = sa.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {_SESSION_TAG}")
    except sa.exc.OperationalError as e:
        admin.dispose()
        _unreachable(f"{kind} server unreachable at {admin_url.render_as_string(hide_password=True)}", e.orig)
    url = admin_url.set(database=_SESSION_TAG).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        if kind == "postgresql":
            with admin.connect() as c:
                c.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{_SESSION_TAG}' AND pid <> pg_backend_pid()"
                )
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {_SESSION_TAG}")
        admin.dispose()


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    yield from _upgraded(_server_database("postgresql"))


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    yield from _upgraded(_server_database("mysql"))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> Iterator[str]:
    yield from _upgraded(iter([f"sqlite:///{tmp_path_factory.mktemp('db')}/computeflow.sqlite"]))


def _upgraded(urls: Iterator[str]) -> Iterator[str]:
    for url in urls:
        db = Database(url)
        schema.upgrade(db)
        db.dispose()
        yield url


def clean(url: str) -> None:
    db = Database(url)
    with db.engine.begin() as c:
        for t in MUTABLE_TABLES:
            c.exec_driver_sql(f"DELETE FROM {t}")
        c.exec_driver_sql("DELETE FROM images WHERE path IS NOT NULL")  # snapshots; seeds have none
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request) -> str:
    """Each test using this runs once per database, on a clean slate."""
    url = request.getfixturevalue(f"{request.param}_url")
    clean(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def crash_db_url(request) -> str:
    url = request.getfixturevalue(f"{request.param}_url")
    clean(url)
    return url


def write_conf(path: Path, state_path: Path, db_url: str, extra: str = "") -> Path:
    path.write_text(
        f"[DEFAULT]\nstate_path = {state_path}\nvif_plugging_timeout = 2\nboot_timeout = 5\n"
        f"[database]\nconnection = {db_url}\n[conductor]\nlease_seconds = 10\n{extra}"
    )
    return path


@pytest.fixture
def conf_file(tmp_path, db_url) -> Path:
    return write_conf(tmp_path / "computeflow.conf", tmp_path / "state", db_url)


@pytest.fixture
def conductor(conf_file) -> Iterator[Conductor]:
    c = Conductor(config.load([str(conf_file)]))
    c.add_host("h1", vcpus=16, ram_mb=32768, disk_gb=500)
    try:
        yield c
    finally:
        c.close()


def run_cli(conf: Path, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `computeflow` in a real process of its own (as an operator would), forked from
    this worker's pre-imported zygote (tests/cli_zygote.py says why)."""
    return cli_zygote.run(["--config-file", str(conf), *args], stdin=stdin, timeout=timeout)


REDIS = os.environ.get("COMPUTEFLOW_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis jobboard URL with a key namespace private to this test (deleted after)."""
    import redis

    client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as e:
        client.close()
        _unreachable(f"Redis unreachable at {REDIS}", e)
    namespace = f"cf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"{REDIS}?namespace={namespace}"
    finally:
        try:
            for key in client.scan_iter(f"{namespace}:*"):
                client.delete(key)
        except redis.exceptions.ConnectionError:
            pass  # a disruptive test left Redis down; its keys died with it
        client.close()


ZOOKEEPER = os.environ.get("COMPUTEFLOW_TEST_ZOOKEEPER", "127.0.0.1:2181")
ETCD = os.environ.get("COMPUTEFLOW_TEST_ETCD", "127.0.0.1:2379")


@pytest.fixture
def zookeeper_url() -> Iterator[str]:
    """A ZooKeeper jobboard URL under a path private to this test (deleted after)."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=ZOOKEEPER, timeout=5)
    try:
        client.start(timeout=5)
    except Exception as e:  # noqa: BLE001 - kazoo's timeout or socket error
        client.close()
        _unreachable(f"ZooKeeper unreachable at {ZOOKEEPER}", e)
    path = f"/cf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"zookeeper://{ZOOKEEPER}?path={path}"
    finally:
        client.delete(path, recursive=True) if client.exists(path) else None
        client.stop()
        client.close()


@pytest.fixture
def etcd_url() -> Iterator[str]:
    """An etcd jobboard URL under a key prefix private to this test (deleted after)."""
    import etcd3gw

    host, port = ETCD.split(":")
    client = etcd3gw.client(host=host, port=int(port), timeout=5)
    try:
        client.status()
    except Exception as e:  # noqa: BLE001 - etcd3gw's connection errors
        _unreachable(f"etcd unreachable at {ETCD}", e)
    path = f"/cf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"etcd://{ETCD}?path={path}"
    finally:
        client.delete_prefix(path)


@pytest.fixture(params=["redis", "zookeeper", "etcd"])
def board_url(request) -> str:
    """Each test using this runs once per jobboard server taskflow offers."""
    return request.getfixturevalue(f"{request.param}_url")


# -- the inner loop (`scripts/test.sh --quick`) needs no server -------------------
_SERVER_FIXTURES = {"postgresql_url", "mysql_url", "redis_url", "zookeeper_url", "etcd_url"}


def pytest_collection_modifyitems(config, items) -> None:
    """With COMPUTEFLOW_TEST_QUICK=1, leave out every test that uses a server
    through a fixture (the servers parametrized by id are left out by -k)."""
    if os.environ.get("COMPUTEFLOW_TEST_QUICK") != "1":
        return
    kept, left_out = [], []
    for item in items:
        (left_out if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


# -- how long the real-hypervisor tiers took (printed at the end of every run) --
_LIBVIRT_TIERS = "tests/drivers/libvirt/"
_tier_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    """Sum setup + call + teardown per file of the libvirt tiers that use real
    daemons (marker `integration`): their total has a budget (docs/libvirt.md)."""
    if report.nodeid.startswith(_LIBVIRT_TIERS) and "integration" in report.keywords:
        path = report.nodeid.split("::", 1)[0]
        _tier_seconds[path] = _tier_seconds.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _tier_seconds:
        return
    terminalreporter.section("real-guest and live-migration tiers (libvirt, seconds)")
    for path, seconds in sorted(_tier_seconds.items()):
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_tier_seconds.values()):8.1f}  total")
    left = _domains_left_on_system_daemon()
    if left:  # a run killed mid-test leaves them; later runs' hosts are named afresh
        terminalreporter.write_line(f"domains left on qemu:///system: {' '.join(left)}", yellow=True)


def _domains_left_on_system_daemon() -> list[str]:
    """computeflow's (`cf-`) domain names still defined on qemu:///system."""
    import subprocess

    try:
        out = subprocess.run(
            ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [name for name in out.split() if name.startswith("cf-")]


# -- a test that leaves a library's non-daemon thread behind must not hang the run --
_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config) -> None:
    """Python waits at exit for every non-daemon thread. Some libraries start
    one per connection (taskflow's etcd jobboard watches with one; its close()
    ends it): a board a test failed to close would keep the finished run alive
    until CI's limit. Name such threads loudly and exit with the tests' status."""
    import threading

    stuck = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if stuck and _exit_status:
        sys.stderr.write(
            f"\nconftest: non-daemon threads left running after the tests (a "
            f"connection some test did not close): {', '.join(sorted(stuck))}; "
            f"exiting without waiting for them\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(_exit_status[0])
