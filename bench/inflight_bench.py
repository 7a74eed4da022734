"""Operations in flight at once when each mostly waits, by `[conductor] workers`.

Real hypervisor steps mostly wait (an image copy, a boot, a network event).
Here every spawn waits `--wait` seconds in `wait_for_vif_plugged` (the fake
driver's latency model, `[fake] latency`), N spawns run at once through one
in-process conductor on SQLite, and the wall time is set against the ideal
(one wait plus the CPU time the same N spawns take without waiting, measured
first in the same run). A waiting step holds one of the `workers` threads,
so the wall time shows how many operations that pool keeps moving.

Usage: .venv/bin/python bench/inflight_bench.py [-n 100] [--wait 2] [--workers 8,64,256]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from concurrent import futures

from conductor import config
from conductor.api import Conductor, SpawnRequest


def run(n: int, workers: int, wait: float) -> float:
    """Wall seconds for n spawns run at once, each waiting `wait` s."""
    state = tempfile.mkdtemp(prefix="cf-inflight-")
    latency = [f"wait_for_vif_plugged:{wait}"] if wait else []
    conf = config.load(
        [], overrides={(None, "state_path"): state, ("conductor", "workers"): workers, ("fake", "latency"): latency}
    )
    with Conductor(conf) as c:
        c.add_host("h1", vcpus=10**6, ram_mb=10**9, disk_gb=10**8)
        ids = [c.submit_spawn(SpawnRequest(name=f"vm{i}", flavor="m1.tiny", image="cirros")) for i in range(n)]
        t0 = time.monotonic()
        with futures.ThreadPoolExecutor(n) as pool:
            states = set(pool.map(lambda op_id: c.run(op_id).state, ids))
        wall = time.monotonic() - t0
    if states != {"SUCCEEDED"}:
        raise SystemExit(f"workers={workers}: operations ended {states}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="spawns run at once")
    ap.add_argument("--wait", type=float, default=2.0, help="seconds each spawn waits")
    ap.add_argument("--workers", default="8,64,256", help="pool sizes to compare")
    args = ap.parse_args()
    sizes = [int(w) for w in args.workers.split(",")]
    cpu = run(args.n, max(sizes), 0.0)
    ideal = args.wait + cpu
    print(
        f"{args.n} spawns at once, each waiting {args.wait:g} s; without waiting they take "
        f"{cpu:.1f} s, so the ideal is {ideal:.1f} s"
    )
    print(f"{'workers':>8} {'wall s':>8} {'x ideal':>8} {'waits overlapped (n*wait/wall)':>31}")
    for w in sizes:
        wall = run(args.n, w, args.wait)
        print(f"{w:>8} {wall:>8.1f} {wall / ideal:>8.2f} {args.n * args.wait / wall:>31.1f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
