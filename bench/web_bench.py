"""The web server's figures, against a real `computeflow serve` process.

1. API list pages over 100,000 stored operations (newest first; a page 5,000
   and one 50,000 operations in, reached by following `next`; the last page
   and the one before it, by `last` and its `prev`; filtered by state, kind +
   instance, kind alone, host, error text): the server's own time per request (its
   Server-Timing header), median of --repeat.
2. The page of one operation with a 50-step flow (a spawn with 39 network
   ports: its parallel block is 43 branches wide), HTML and JSON.
3. Live updates: the delay from a flow-log commit (written here, as a step's
   transition is) to the server-sent event that reports it, on the client.

Each database is seeded here (a temporary SQLite file; cf_web_bench on
PostgreSQL/MariaDB, dropped and made again). Targets: list page < 100 ms,
50-step operation page < 200 ms, live update <= 1 s.

Usage: .venv/bin/python bench/web_bench.py [--db sqlite postgresql mysql] [--ops 100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows import catalog  # noqa: E402
from persistence import schema  # noqa: E402
from persistence.models import FlowLogEntry, Host, Instance, Operation  # noqa: E402
from persistence.session import Database  # noqa: E402
from tests.conftest import write_conf  # noqa: E402
from tests.web.conftest import TOKENS, WEB_CONF, serving  # noqa: E402

URLS = {
    "postgresql": "postgresql+psycopg2://root@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
KINDS = ["reboot", "power_off", "power_on", "resize", "live_migration", "snapshot", "spawn"]
STATES = ["SUCCEEDED"] * 97 + ["FAILED", "REVERTED", "REVERTED"]
BIG_VIFS = 39  # 11 fixed spawn steps + 39 ports = 50 steps


def database(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/web.sqlite"
    admin = sa.create_engine(URLS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS cf_web_bench")
        c.exec_driver_sql("CREATE DATABASE cf_web_bench")
    admin.dispose()
    return sa.make_url(URLS[kind]).set(database="cf_web_bench").render_as_string(False)


def seed(url: str, n: int) -> str:
    """n operations over 1,000 instances on 10 hosts, and one 50-step spawn
    (its id returned) with every step's RUNNING and SUCCESS in the flow log."""
    db = Database(url)
    schema.upgrade(db)
    t0 = dt.datetime(2026, 1, 1)
    hosts = [f"h{i}" for i in range(10)]
    inst = [(str(uuid.uuid4()), f"vm{i}", hosts[i % 10]) for i in range(1000)]
    with db.engine.begin() as c:
        # h99: a host no operation names (a host search that finds nothing).
        c.execute(
            sa.insert(Host.__table__),
            [dict(name=h, driver="fake", uri="", vcpus=64, ram_mb=262144, disk_gb=4000) for h in hosts + ["h99"]],
        )
        c.execute(
            sa.insert(Instance.__table__),
            [
                dict(
                    uuid=u,
                    name=name,
                    host=h,
                    flavor="m1.small",
                    image="cirros",
                    vm_state="active",
                    power_state="running",
                    vifs=[],
                    volumes=[],
                    created_at=t0,
                )
                for u, name, h in inst
            ],
        )
    batch = 10_000
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(start + batch, n)):
            at = t0 + dt.timedelta(seconds=i)
            state = STATES[i % len(STATES)]
            u, _, h = inst[i % len(inst)]
            rows.append(
                dict(
                    id=str(uuid.uuid4()),
                    kind=KINDS[i % len(KINDS)],
                    instance_uuid=u,
                    parameters={"host": h},
                    state=state,
                    flow_version=1,
                    error=f"step wait_running: timed out #{i}" if state != "SUCCEEDED" else None,
                    created_at=at,
                    started_at=at,
                    finished_at=at + dt.timedelta(seconds=2),
                )
            )
        with db.engine.begin() as c:
            c.execute(sa.insert(Operation.__table__), rows)
    big = str(uuid.uuid4())
    u, _, h = inst[0]
    flavor = {"name": "m1.small", "vcpus": 1, "ram_mb": 512, "root_gb": 1, "ephemeral_gb": 1, "swap_mb": 64}
    vifs = [{"id": str(uuid.uuid4()), "mac": "fa:16:3e:00:00:00", "network": "default"} for _ in range(BIG_VIFS)]
    at = t0 + dt.timedelta(seconds=n + 10)
    steps = (
        [
            "take_hold",
            "claim_resources",
            "ensure_base_image",
            "create_root_disk",
            "create_ephemeral_disk",
            "create_swap_disk",
        ]
        + [f"plug_vif_{i}" for i in range(BIG_VIFS)]
        + ["wait_vif_plugged", "define_guest", "power_on", "wait_running", "mark_active"]
    )
    assert len(steps) == 50
    log = []
    for k, step in enumerate(steps):
        for j, state in enumerate(("RUNNING", "SUCCESS")):
            log.append(
                dict(
                    flow_detail_uuid=big,
                    atom_uuid=str(k),
                    step=step,
                    state=state,
                    attempt=1,
                    at=at + dt.timedelta(milliseconds=10 * k + 5 * j),
                )
            )
    with db.engine.begin() as c:
        c.execute(
            sa.insert(Operation.__table__),
            [
                dict(
                    id=big,
                    kind="spawn",
                    instance_uuid=u,
                    flow_detail_uuid=big,
                    state="RUNNING",
                    flow_version=catalog.get("spawn").version,
                    created_at=at,
                    started_at=at,
                    parameters={
                        "instance_uuid": u,
                        "name": "vm0",
                        "host": h,
                        "flavor": flavor,
                        "image": {"name": "cirros"},
                        "vifs": vifs,
                        "admin_password": None,
                    },
                )
            ],
        )
        c.execute(sa.insert(FlowLogEntry.__table__), log)
    if db.dialect != "sqlite":  # fresh statistics, as a server that has run a while has
        with db.engine.begin() as c:
            for table in ("operations", "instances", "flow_log"):
                c.exec_driver_sql(f"ANALYZE {'TABLE ' if db.dialect == 'mysql' else ''}{table}")
    db.dispose()
    return big


class Client:
    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def get(self, path: str) -> tuple[float, bytes]:
        """(the server's own ms, the body) of one GET."""
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {TOKENS['reader']}"})
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status, body[:300])
        return float(resp.getheader("server-timing").split("dur=")[1]), body

    def server_ms(self, path: str) -> float:
        return self.get(path)[0]

    def page(self, path: str) -> dict:
        return json.loads(self.get(path)[1])

    def cursor_after(self, query: str, rows: int) -> str:
        """The `next` token after the first `rows` operations, walking 500 at a time."""
        token = ""
        for _ in range(rows // 500):
            page = self.page(f"/api/v1/operations?{query}&limit=500{token}")
            token = f"&cursor={page['next']}"
        return token


def median_ms(client: Client, path: str, repeat: int) -> tuple[float, float]:
    """(first request, median of the next `repeat`)."""
    first = client.server_ms(path)
    return first, statistics.median(client.server_ms(path) for _ in range(repeat))


def live_delays(base: str, url: str, op_id: str, samples: int) -> list[float]:
    """Commit a flow-log row, wait for the event naming it; seconds each."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/api/v1/operations/{op_id}/events", headers={"Authorization": f"Bearer {TOKENS['reader']}"})
    resp = conn.getresponse()
    seen: dict[int, float] = {}
    arrived = threading.Condition()

    def read() -> None:
        try:
            for raw in resp:
                line = raw.decode()
                if line.startswith("data: "):
                    d = json.loads(line[6:])
                    if "last_row" in d:
                        with arrived:
                            seen[d["last_row"]] = time.perf_counter()
                            arrived.notify_all()
        except (OSError, AttributeError, ValueError):
            return  # the bench closed the connection

    threading.Thread(target=read, daemon=True).start()
    db = Database(url)
    delays = []
    for i in range(samples):
        time.sleep(0.13 * (i % 3))  # commits at different points of the server's poll cycle
        with db.engine.begin() as c:
            row_id = c.execute(
                sa.insert(FlowLogEntry.__table__).values(
                    flow_detail_uuid=op_id,
                    atom_uuid="bench",
                    step="wait_running",
                    state="RUNNING",
                    attempt=i + 2,
                    at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                )
            ).inserted_primary_key[0]
        committed = time.perf_counter()
        with arrived:
            if not arrived.wait_for(lambda r=row_id: r in seen, timeout=10):
                raise SystemExit(f"no event for row {row_id} within 10 s")
        delays.append(seen[row_id] - committed)
    db.dispose()
    conn.close()
    return delays


def run(kind: str, n: int, repeat: int, samples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = database(kind, Path(tmp))
        t = time.perf_counter()
        big = seed(url, n)
        print(f"== {kind}: {n:,} operations seeded in {time.perf_counter() - t:.0f} s", flush=True)
        conf = write_conf(Path(tmp) / "web.conf", Path(tmp) / "state", url, WEB_CONF)
        with serving(conf, Path(tmp) / "serve.log", deadline_s=60) as base:
            c = Client(base)
            at_5k, at_50k = c.cursor_after("", 5_000), c.cursor_after("", 50_000)
            last = c.page("/api/v1/operations")["last"]
            before_last = c.page(f"/api/v1/operations?cursor={last}")["prev"]
            print(f"{'request':<58} {'first ms':>9} {'median ms':>10}")
            for label, path in [
                ("API list, newest 50", "/api/v1/operations"),
                ("API list, 5,000 in (a next cursor)", f"/api/v1/operations?limit=50{at_5k}"),
                ("API list, 50,000 in (a next cursor)", f"/api/v1/operations?limit=50{at_50k}"),
                ("API list, the last page (cursor=last)", f"/api/v1/operations?cursor={last}"),
                ("API list, the page before it (its prev)", f"/api/v1/operations?cursor={before_last}"),
                ("API list, state=FAILED", "/api/v1/operations?state=FAILED"),
                ("API list, state=FAILED, its last page", f"/api/v1/operations?state=FAILED&cursor={last}"),
                ("API list, kind=reboot&instance=vm7", "/api/v1/operations?kind=reboot&instance=vm7"),
                ("API list, kind=evacuate (none: an empty index range)", "/api/v1/operations?kind=evacuate"),
                ("API list, host=h3", "/api/v1/operations?host=h3"),
                ("API list, host=h99 (none: 10,000 read, partial)", "/api/v1/operations?host=h99"),
                (
                    "API list, host=h99, the page after that one",
                    f"/api/v1/operations?host=h99&cursor={c.page('/api/v1/operations?host=h99')['next']}",
                ),
                (
                    "API list, error=timed out #99999 (1 hit of 3,000 errors)",
                    "/api/v1/operations?error=timed%20out%20%2399999",
                ),
                ("API list, error=nowhere (none of 3,000 errors)", "/api/v1/operations?error=nowhere"),
                ("API list, error=TIMED OUT, its last page", f"/api/v1/operations?error=TIMED%20OUT&cursor={last}"),
                ("list page (HTML), newest 50", "/operations"),
                ("list page (HTML), the last page", f"/operations?cursor={last}"),
                ("operation page (HTML), 50 steps", f"/operations/{big}"),
                ("operation API (JSON), 50 steps", f"/api/v1/operations/{big}"),
            ]:
                first, med = median_ms(c, path, repeat)
                print(f"{label:<58} {first:9.1f} {med:10.1f}", flush=True)
            d = sorted(live_delays(base, url, big, samples))
            print(
                f"live update after a commit ({samples} commits): median {statistics.median(d) * 1000:.0f} ms, "
                f"p90 {d[int(len(d) * 0.9) - 1] * 1000:.0f} ms, max {d[-1] * 1000:.0f} ms",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql", "mysql"])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    for kind in args.db:
        run(kind, args.ops, args.repeat, args.samples)


if __name__ == "__main__":
    main()
