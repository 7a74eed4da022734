"""Where a process's CPU goes, by thread kind and by stack (an on-CPU sampler).

    CPU_SAMPLER_OUT=report.txt python bench/cpu_sampler.py MODULE [ARGS...]

runs `python -m MODULE ARGS...` (e.g. `conductor.cli --config-file c.conf
conductor`) with a sampling thread. Every CPU_SAMPLER_INTERVAL seconds
(default 0.05) it reads each thread's own CPU clock; a thread whose clock
advanced since the last look has its stack recorded, weighted by the CPU it
used meanwhile. So waiting threads, however many, weigh nothing, and the
report shows where the CPU went, which a wall-clock stack sampler cannot
tell among thousands of blocked threads. At exit (SIGTERM included, when
the program exits normally on it, as the conductor does) it writes the CPU
per thread kind (the thread's name without its number), per frame
(inclusive) and the heaviest stacks. The cost is one clock read per thread
per look: ~2% of a core with 3,000 threads. bench/fleet_bench.py
--sample-cpu DIR runs its conductors under it.
"""

from __future__ import annotations

import atexit
import collections
import gc
import os
import re
import runpy
import sys
import threading
import time

OUT = os.environ.get("CPU_SAMPLER_OUT", "cpu_sampler.txt")
INTERVAL = float(os.environ.get("CPU_SAMPLER_INTERVAL", "0.05"))
DEPTH = 14

by_kind: collections.Counter[str] = collections.Counter()
by_stack: collections.Counter[tuple[str, ...]] = collections.Counter()
looks = 0


def _kind(name: str) -> str:
    return re.sub(r"[-_]?\d+$", "", name)


def _sample() -> None:
    global looks
    me = threading.get_ident()
    last: dict[int, float] = {}
    while True:
        time.sleep(INTERVAL)
        # A collection started inside _current_frames (it holds the runtime's
        # thread-list lock) deadlocks with finalizers that need it: seen on 3.11.
        gc.disable()
        try:
            frames = sys._current_frames()
        finally:
            gc.enable()
        looks += 1
        seen = set()
        for t in threading.enumerate():
            tid = t.ident
            if tid is None or tid == me:
                continue
            seen.add(tid)
            try:
                # The kernel's CPU clock of a thread id (MAKE_THREAD_CPUCLOCK):
                # safe for a thread that ended meanwhile (EINVAL), unlike
                # pthread_getcpuclockid, which read the freed pthread and crashed.
                cpu = time.clock_gettime(((~t.native_id) << 3) | 6)  # type: ignore[operator]
            except (OSError, TypeError):
                continue
            used = cpu - last.get(tid, cpu)
            last[tid] = cpu
            if used <= 0:
                continue
            by_kind[_kind(t.name)] += used
            stack, f = [], frames.get(tid)
            while f is not None and len(stack) < DEPTH:
                stack.append(f"{os.path.basename(f.f_code.co_filename)}:{f.f_code.co_name}:{f.f_lineno}")
                f = f.f_back
            by_stack[tuple(stack)] += used
        for tid in set(last) - seen:
            del last[tid]


def _report() -> None:
    t = os.times()
    inclusive: collections.Counter[str] = collections.Counter()
    for stack, used in by_stack.items():
        for frame in set(stack):
            inclusive[frame] += used
    with open(OUT, "w") as out:
        out.write(
            f"process CPU: user {t.user:.1f} s, system {t.system:.1f} s; {looks} looks; "
            f"sampled {sum(by_kind.values()):.1f} s\n\nCPU by thread kind (s):\n"
        )
        out.writelines(f"  {v:8.2f} {k}\n" for k, v in by_kind.most_common())
        out.write("\nCPU by frame, inclusive (s):\n")
        out.writelines(f"  {v:8.2f} {k}\n" for k, v in inclusive.most_common(80))
        out.write("\nheaviest stacks (innermost first):\n")
        for stack, used in by_stack.most_common(40):
            out.write(f"{used:8.2f}\n    " + "\n    ".join(stack) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    atexit.register(_report)
    threading.Thread(target=_sample, name="cpu-sampler", daemon=True).start()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
