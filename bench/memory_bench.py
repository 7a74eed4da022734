"""RSS of one long-running conductor over many operations.

taskflow's stock SQLAlchemy backend keeps ~12 MB per flow here forever; a
conductor must stay flat. Runs N operations (spawn+destroy pairs) in one
process and prints RSS every 10% and the growth after warm-up.

Usage: .venv/bin/python bench/memory_bench.py [--ops 10000] [--db URL]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

from conductor import config
from conductor.api import Conductor, SpawnRequest


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=10_000, help="operations (half spawns, half destroys)")
    ap.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="cf-mem-")
    conf = config.load(
        [],
        overrides={
            ("DEFAULT", "state_path"): state,
            ("database", "connection"): args.db or f"sqlite:///{state}/computeflow.sqlite",
        },
    )
    c = Conductor(conf)
    c.add_host("mem", vcpus=64, ram_mb=1 << 20, disk_gb=1 << 16)
    pairs = args.ops // 2
    warm = None
    start = time.perf_counter()
    for i in range(pairs):
        assert c.run(c.submit_spawn(SpawnRequest(f"m{i}", "m1.tiny", "cirros", host="mem"))).state == "SUCCEEDED"
        assert c.run(c.submit_destroy(f"m{i}")).state == "SUCCEEDED"
        if (i + 1) % max(1, pairs // 10) == 0:
            gc.collect()
            rss = rss_mb()
            warm = warm if warm is not None else rss
            print(f"{2 * (i + 1):>7} ops  RSS {rss:7.1f} MB  ({time.perf_counter() - start:6.0f}s)", flush=True)
    gc.collect()
    final = rss_mb()
    print(
        f"growth after the first 10%: {final - warm:+.1f} MB ({(final - warm) / warm * 100:+.1f}%) "
        f"over {args.ops - args.ops // 10} operations"
    )
    c.close()


if __name__ == "__main__":
    main()
