"""Fleet scale: how many waiting operations conductor processes keep moving.

    .venv/bin/python bench/fleet_bench.py [--ops 1000] [--wait 20] [--conductors 1]
                                          [--ratio-ops 300] [--ratio-max-operations 100]
                                          [--ratio-wait SECONDS] [--idle-samples 20]
                                          [--quiet-samples 5]
                                          [--hosts N] [--sample-cpu DIR] [--pymalloc]

Every spawn waits `--wait` seconds in `wait_for_vif_plugged` (the fake
driver's latency model, `[fake] latency`), as a real spawn waits for its
network. Conductors run with the default options otherwise (PostgreSQL +
Redis, as bench/scaleout_bench.py, whose helpers this reuses).

1. The burst, for each count in --conductors: the conductors start and
   settle, are paused (SIGSTOP) while N spawns are submitted, then resumed,
   so all N arrive at once. The same burst without the wait, measured first,
   is the CPU time; the ideal is wait + that. Printed: wall time (first
   start to last finish, from the operations' own timestamps) against the
   ideal, per-operation run time p50/p99 and their ratio, each conductor's
   RSS at start, at its peak (VmHWM) and once its idle threads have ended,
   and its peak connections to PostgreSQL (its own sockets, sampled) against
   the bound its pools allow.
2. The 3-vs-1 ratio on a wait-dominated workload: --ratio-ops spawns with
   max_operations = --ratio-max-operations, so one conductor needs several
   waves; throughput of 3 conductors against 1.
3. Idle latency (one spawn at a time, no waiting): submit -> first step
   RUNNING and submit -> operation done, through one idle conductor against
   the in-process runner; and through the conductor after a quiet spell
   (--quiet-samples, each once the conductor's idle threads ended and a
   heartbeat released what its last run held), as an operator's occasional
   submission meets it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from scaleout_bench import PG, REPO, Bench, scratch_database, wait_for  # also puts the repo on sys.path

from conductor import config  # noqa: E402
from conductor.api import Conductor, SpawnRequest  # noqa: E402
from persistence import operations  # noqa: E402
from persistence.models import FLOW_STEP, FlowLogEntry, Operation  # noqa: E402
from persistence.session import connection_bound  # noqa: E402

PG_PORT = sa.make_url(PG).port or 5432


CLAIM_EXPIRY = 30  # the default; the heartbeat runs every third of it


class FleetBench(Bench):
    """Conductors with default options but for the latency model."""

    def start(self, name: str, extra: str = ""):
        env = dict(os.environ)
        if not self.args.pymalloc:
            env["PYTHONMALLOC"] = "malloc"  # the documented deployment setting (docs/scale-out.md)
        run = ["-m", "conductor.cli"]
        if self.args.sample_cpu:  # bench/cpu_sampler.py writes where the CPU went at exit
            env["CPU_SAMPLER_OUT"] = str(Path(self.args.sample_cpu) / f"{name}.txt")
            run = [str(REPO / "bench" / "cpu_sampler.py"), "conductor.cli"]
        p = subprocess.Popen(
            [sys.executable, *run, "--config-file", str(self.conf(name, extra)), "conductor"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wait, self.max_operations = 0.0, None
        #: Threads of each conductor once serving, before any operation: what "idle" means.
        self.base_threads: dict[int, int] = {}

    def reset(self) -> Conductor:
        """A clean database, with enough fake hosts that the per-host build
        limit (`[conductor] max_concurrent_builds`, default 10) lets a whole
        burst run at once, as on a fleet (placement spreads spawns by free RAM)."""
        c = super().reset()
        with c.db.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM host_slots")
        for i in range(2, self.args.hosts + 1):
            c.add_host(f"h{i}", vcpus=100000, ram_mb=100000 * 1024, disk_gb=10**6)
        return c

    def conf(self, name: str, extra: str = "") -> Path:
        path = self.tmp / f"{name}.conf"
        limit = f"max_operations = {self.max_operations}\n" if self.max_operations else ""
        latency = f"[fake]\nlatency = wait_for_vif_plugged:{self.wait:g}\n" if self.wait else ""
        path.write_text(
            f"[DEFAULT]\nstate_path = {self.tmp / 'state'}\n[database]\nconnection = {self.db_url}\n"
            f"[conductor]\njobboard = {self.board_url}\nlog_file = {self.tmp / name}.log\n{limit}"
            f"{latency}{extra}"
        )
        return path


# -- what a process holds, from /proc ----------------------------------------------
def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def pg_sockets(pid: int) -> int:
    """Established TCP connections of `pid` to the PostgreSQL port."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == PG_PORT and fields[9] in inodes:
                count += 1
    return count


def rss_by_kind(pid: int) -> dict[str, int]:
    """Resident kB of a process by kind of mapping (/proc/PID/smaps): the
    brk heap, glibc's mmapped arenas and large blocks, thread stacks (8 MiB
    mappings), files (code, libraries) and the rest."""
    kinds: dict[str, int] = {}
    kind = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            size_kb = (hi - lo) // 1024
            kind = (
                "files"
                if path.startswith("/")
                else "heap"
                if path == "[heap]"
                else "thread stacks"
                if size_kb == 8192 and fields[1] == "rw-p"
                else "other"
                if path
                else "anonymous (arenas, large blocks)"
            )
        elif fields[0] == "Rss:":
            kinds[kind] = kinds.get(kind, 0) + int(fields[1])
    return kinds


class Sampler:
    """Samples every conductor's connections (and threads) until stopped."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_conns = dict.fromkeys(pids, 0)
        self.peak_threads = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            for pid in self.pids:
                try:
                    self.peak_conns[pid] = max(self.peak_conns[pid], pg_sockets(pid))
                    self.peak_threads[pid] = max(self.peak_threads[pid], status(pid)["Threads"])
                except (FileNotFoundError, ProcessLookupError):
                    pass


# -- one burst -------------------------------------------------------------------
def start_settled(b: FleetBench, c: Conductor, names: list[str]) -> list:
    """Start conductors, let each run a first spawn (the imports and caches
    of a first operation are not the burst's), wait until they are idle."""
    procs = [b.start(n) for n in names]
    for name, p in zip(names, procs, strict=True):
        log = b.tmp / f"{name}.log"
        wait_for(lambda log=log: log.exists() and "serving" in log.read_text(), 120, f"{name} to serve")
        time.sleep(0.5)  # the wake-up listeners start just after the log line
        b.base_threads[p.pid] = status(p.pid)["Threads"]
    warm_up(c, len(names), "warm")
    settle(b, procs)
    return procs


def warm_up(c: Conductor, conductors: int, prefix: str) -> None:
    """Two spawns per conductor, one after the other's submission, waited for."""
    warm = [
        c.submit_spawn(SpawnRequest(name=f"{prefix}{i}", flavor="m1.tiny", image="cirros"))
        for i in range(2 * conductors)
    ]
    for op_id in warm:
        op_id.wait(timeout=600)


def settle(b: FleetBench, procs: list) -> None:
    """Wait for the idle threads to end, then a heartbeat (which returns a
    burst's free memory, conductor/memory.py), then for any conductor that
    restarted itself in place (`recycle_rss_growth`) to serve again."""
    for p in procs:
        wait_for(lambda p=p: status(p.pid)["Threads"] <= b.base_threads[p.pid], 300, "idle threads to end")
    time.sleep(CLAIM_EXPIRY / 3 + 1)
    for log in b.tmp.glob("*.log"):
        wait_for(lambda log=log: restarts(log) < log.read_text().count("serving ("), 120, f"{log.stem} to serve again")
    time.sleep(1)  # its wake-up listeners start just after the log line


def restarts(log: Path) -> int:
    """How many times a conductor restarted itself in place, from its log."""
    return log.read_text().count("restarting in place") if log.exists() else 0


def burst(b: FleetBench, n: int, k: int, wait: float, max_operations: int | None = None) -> dict:
    b.wait, b.max_operations = wait, max_operations
    c = b.reset()
    try:
        names = [f"w{wait:g}-k{k}-c{i}" for i in range(k)]
        procs = start_settled(b, c, names)
        pids = [p.pid for p in procs]
        start = {pid: status(pid) for pid in pids}
        maps = {pid: [rss_by_kind(pid)] for pid in pids}
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        with c.db.session() as s:
            submitted = s.scalar(sa.select(sa.func.max(Operation.created_at)))
        for i in range(n):  # spread by hand: placement at submit sees none of the burst yet
            c.submit_spawn(
                SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros", host=f"h{i % b.args.hosts + 1}")
            )
        with Sampler(pids) as sampler:
            for p in procs:
                p.send_signal(signal.SIGCONT)

            def finished():
                with c.db.session() as s:
                    return (
                        s.scalar(
                            sa.select(sa.func.count())
                            .select_from(Operation)
                            .where(Operation.state.in_(operations.FINAL_STATES), Operation.created_at > submitted)
                        )
                        == n
                    )

            wait_for(finished, 7200, f"{n} operations on {k} conductors")
        with c.db.session() as s:
            rows = s.execute(
                sa.select(Operation.started_at, Operation.finished_at, Operation.state).where(
                    Operation.created_at > submitted
                )
            ).all()
        peak = {pid: status(pid)["VmHWM"] for pid in pids}
        settle(b, procs)
        if any(restarts(b.tmp / f"{name}.log") for name in names):
            # Restarted in place: warm up again as at the start (first-operation
            # imports and caches), so that start and after compare like for like.
            warm_up(c, k, "rewarm")
            settle(b, procs)
        after = {pid: status(pid)["VmRSS"] for pid in pids}
        for pid in pids:
            maps[pid].append(rss_by_kind(pid))
        b.stop_all()
    finally:
        c.close()
    runs = sorted((f - s).total_seconds() for s, f, _ in rows)
    wall = (max(f for _, f, _ in rows) - min(s for s, _, _ in rows)).total_seconds()
    return {
        "n": n,
        "k": k,
        "wall": wall,
        "ok": sum(st == operations.SUCCEEDED for *_, st in rows),
        "p50": _pct(runs, 50),
        "p99": _pct(runs, 99),
        "rss": [(start[p]["VmRSS"] / 1024, peak[p] / 1024, after[p] / 1024) for p in pids],
        "conns": [sampler.peak_conns[p] for p in pids],
        "threads": [(start[p]["Threads"], sampler.peak_threads[p]) for p in pids],
        "maps": [maps[p] for p in pids],
        "restarts": [restarts(b.tmp / f"{name}.log") for name in names],
    }


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


# -- idle latency ---------------------------------------------------------------
def latencies(c: Conductor, run_here: bool, samples: int, prefix: str = "") -> tuple[list[float], list[float]]:
    """(submit -> first step RUNNING, submit -> done) in ms, one spawn at a time."""
    first, done = [], []
    for i in range(samples):
        t0 = time.time()
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the flow log's clock (naive UTC)
        op_id = c.submit_spawn(
            SpawnRequest(name=f"idle{prefix}{'h' if run_here else 'c'}{i}", flavor="m1.tiny", image="cirros")
        )
        (c.run(op_id) if run_here else op_id.wait(timeout=60))
        t1 = time.time()
        with c.db.session() as s:
            step = s.scalar(
                sa.select(sa.func.min(FlowLogEntry.at)).where(
                    FlowLogEntry.flow_detail_uuid == op_id, FlowLogEntry.step != FLOW_STEP
                )
            )
        first.append((step - before).total_seconds() * 1000)  # the submission's own time included
        done.append((t1 - t0) * 1000)
    return first, done


def idle_latency(b: FleetBench, samples: int, quiet_samples: int) -> dict:
    """Back to back through a conductor, then each after a quiet spell (the
    conductor's idle threads ended and its heartbeat released what its last
    run held: threads, connections but one per pool, free memory), then back
    to back in-process."""
    b.wait, b.max_operations = 0.0, None
    c = b.reset()
    try:
        procs = start_settled(b, c, ["idle"])
        via_conductor = latencies(c, False, samples)
        quiet: tuple[list[float], list[float]] = ([], [])
        for i in range(quiet_samples):
            settle(b, procs)
            first, done = latencies(c, False, 1, prefix=f"q{i}")
            quiet[0].extend(first)
            quiet[1].extend(done)
        b.stop_all()
    finally:
        c.close()
    local = Conductor(config.load([str(b.conf("client"))], overrides={("conductor", "jobboard"): ""}))
    try:
        here = latencies(local, True, samples)
    finally:
        local.close()
    rows = {"conductor": via_conductor, "in-process": here}
    if quiet_samples:
        rows["conductor after a quiet spell"] = quiet
    return rows


# -- report ----------------------------------------------------------------------
def report_burst(r: dict, cpu: dict, wait: float, bound: int) -> None:
    ideal = wait + cpu["wall"]
    print(f"\n{r['n']} spawns x {wait:g} s wait on {r['k']} conductor(s): {r['ok']} succeeded")
    print(
        f"  wall {r['wall']:.1f} s; ideal {ideal:.1f} s (wait {wait:g} + CPU {cpu['wall']:.1f}, "
        f"the same burst without waiting) -> {r['wall'] / ideal:.2f}x ideal (target <= 1.5)"
    )
    print(
        f"  per-operation run time p50 {r['p50']:.1f} s, p99 {r['p99']:.1f} s -> p99/p50 "
        f"{r['p99'] / r['p50']:.2f} (target <= 1.5)"
    )
    rows = zip(r["rss"], r["conns"], r["threads"], r["restarts"], strict=True)
    for i, ((s, pk, after), conns, (t0, tmax), again) in enumerate(rows):
        print(
            f"  conductor {i}: RSS start {s:.0f} MB, peak {pk:.0f} MB, after the burst {after:.0f} MB "
            f"({(after - s) / s * 100:+.1f}% vs start, target within 10%; restarted in place {again}x); "
            f"threads {t0} -> peak {tmax}; peak PostgreSQL connections {conns} (bound {bound})"
        )
    for i, (before, after) in enumerate(r["maps"]):
        grew = ", ".join(
            f"{k} {before.get(k, 0) / 1024:.0f} -> {after.get(k, 0) / 1024:.0f}"
            for k in sorted(set(before) | set(after))
        )
        print(f"  conductor {i}: resident MB by mapping, start -> after: {grew}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1000, help="spawns in the burst")
    ap.add_argument("--wait", type=float, default=20.0, help="seconds each spawn waits")
    ap.add_argument("--conductors", default="1", help="conductor counts for the burst, e.g. 1,3 ('': none)")
    ap.add_argument("--ratio-ops", type=int, default=300, help="0: skip the 3-vs-1 ratio")
    ap.add_argument("--ratio-max-operations", type=int, default=100)
    ap.add_argument("--ratio-wait", type=float, help="seconds each spawn of the ratio waits (default --wait)")
    ap.add_argument("--idle-samples", type=int, default=20, help="0: skip idle latency")
    ap.add_argument(
        "--quiet-samples",
        type=int,
        default=5,
        help="idle spawns through the conductor each after a quiet spell (~17 s each; 0: none)",
    )
    ap.add_argument("--jobboard", choices=("redis",), default="redis")
    ap.add_argument(
        "--hosts", type=int, default=0, help="fake hosts (default: enough for the largest burst at 10 builds per host)"
    )
    ap.add_argument(
        "--sample-cpu",
        metavar="DIR",
        help="run the conductors under bench/cpu_sampler.py, one report per conductor in DIR",
    )
    ap.add_argument(
        "--pymalloc",
        action="store_true",
        help="run the conductors with Python's own allocator (no PYTHONMALLOC=malloc)",
    )
    args = ap.parse_args()
    args.hosts = args.hosts or max(1, -(-max(args.ops, args.ratio_ops) // 10))
    print(f"{args.hosts} fake hosts", flush=True)
    with scratch_database("cf_fleet", args.jobboard) as (name, db_url):
        with tempfile.TemporaryDirectory(prefix="cf-fleet-") as tmp:
            b = FleetBench(args, Path(tmp), db_url, name)
            bound = connection_bound(config.load([str(b.conf("probe"))]).database.pool_size, "postgresql")
            try:
                for k in (int(x) for x in args.conductors.split(",") if x.strip()):
                    cpu = burst(b, args.ops, k, 0.0)
                    print(f"  (CPU-only burst on {k}: {cpu['wall']:.1f} s)", flush=True)
                    report_burst(burst(b, args.ops, k, args.wait), cpu, args.wait, bound)
                if args.ratio_ops:
                    m = args.ratio_max_operations
                    wait = args.wait if args.ratio_wait is None else args.ratio_wait
                    one = burst(b, args.ratio_ops, 1, wait, m)
                    three = burst(b, args.ratio_ops, 3, wait, m)
                    print(
                        f"\n3 vs 1 conductor, {args.ratio_ops} spawns x {wait:g} s wait, "
                        f"max_operations={m}: 1 conductor {one['wall']:.1f} s, 3 conductors "
                        f"{three['wall']:.1f} s -> {one['wall'] / three['wall']:.2f}x (target >= 2.7)"
                    )
                if args.idle_samples:
                    lat = idle_latency(b, args.idle_samples, args.quiet_samples)
                    print(
                        f"\nidle latency, {args.idle_samples} spawns one at a time, then {args.quiet_samples} "
                        "each after a quiet spell (ms, p50 / max)"
                    )
                    for who, (first, done) in lat.items():
                        print(
                            f"  {who:>29}: submit -> first step {statistics.median(first):6.1f} / "
                            f"{max(first):6.1f}   submit -> done {statistics.median(done):6.1f} / "
                            f"{max(done):6.1f}"
                        )
            finally:
                b.stop_all()


if __name__ == "__main__":
    main()
