"""Where the reference flow's time goes: cProfile of the 8-trivial-step flow.

Runs the flow on taskflow in memory and on our backend (PostgreSQL by
default), profiles both, and prints the functions whose own time grows the
most between the two: what durability costs, function by function.

Usage: .venv/bin/python bench/profile_flow.py [-n 200] [--db URL] [--top 15]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile

from persistence import schema
from persistence.session import Database
from persistence.taskflow_backend import Backend
from spawn_bench import DEFAULT_PG, fresh_database, trivial_runner


def _profile(one, n: int) -> dict:
    for i in range(10):
        one(i)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(n):
        one(i)
    profiler.disable()
    return pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)


def _where(key: tuple) -> str:
    path, line, name = key
    return f"{path.split('site-packages/')[-1].split('/work/main/')[-1]}:{line}({name})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--db", default=DEFAULT_PG, help="database URL; 'sqlite' for a temporary file")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    if args.db == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='cf-prof-')}/bench.sqlite"
        schema.upgrade(Database(url))
    else:
        url = fresh_database(args.db, "cf_bench_prof")
    backend = Backend(Database(url).engine)
    memory = _profile(trivial_runner(None), args.n)
    durable = _profile(trivial_runner(backend), args.n)
    per_flow = 1000 / args.n
    for label, stats in (("in memory", memory), ("durable", durable)):
        print(
            f"{label:<10} {sum(v[2] for v in stats.values()) * per_flow:6.2f} ms per flow under "
            f"cProfile, {sum(v[1] for v in stats.values()) / args.n:7.0f} calls"
        )
    growth = sorted(
        ((v[2] - memory.get(k, (0, 0, 0))[2], v[1] - memory.get(k, (0, 0))[1], k) for k, v in durable.items()),
        reverse=True,
    )
    print(f"\nown time added per flow (durable minus in memory), top {args.top}:")
    for seconds, calls, key in growth[: args.top]:
        print(f"  {seconds * per_flow:6.3f} ms  {calls / args.n:+7.1f} calls  {_where(key)}")
    backend.close()


if __name__ == "__main__":
    main()
