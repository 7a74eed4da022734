"""Give a burst's memory back to the system once the conductor is idle again.

A burst of a thousand waiting operations allocates from many threads at
once. glibc gives each thread an arena of its own (up to 8 per core) and
keeps what the burst freed in them for reuse, so the process stays at its
peak long after the burst. Two remedies, both no-ops off glibc:

- fewer arenas (`limit_arenas`, at start, before the threads): less memory
  parked in per-thread free lists; threads then share arenas, at a small cost
  in lock contention that a GIL-bound process barely sees;
- `release_free_memory` after a burst: a full garbage collection (the
  burst's cycles wait for one an idle process never triggers), then
  malloc_trim hands free pages inside the arenas back to the kernel.

Python's own allocator (pymalloc) keeps a 1 MiB arena while any object in it
lives, which a burst's scattered survivors do; with PYTHONMALLOC=malloc in
the conductor's environment its objects go through glibc too, and the trim
returns them (docs/scale-out.md, bench/README.md for the figures).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys

LOG = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # mallopt parameter, <malloc.h>
ARENAS = 2


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = ARENAS) -> None:
    """Cap glibc's malloc arenas (call before starting threads)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Collect the garbage the burst left, then return the allocator's free
    pages to the kernel (glibc's malloc_trim).

    The collection matters as much as the trim: a finished flow leaves cycles
    (engines, notifiers, futures) that only a full collection frees, and an
    idle process allocates too little to trigger one. Measured after 300
    spawns in one process: +35% RSS; trimmed alone, +35%; collected and
    trimmed, +12% (45,000 objects were waiting for a collection)."""
    # CPython's method cache holds a reference to the name of each of its 4,096
    # recent attribute look-ups; C extensions (psycopg2, SQLAlchemy's compiled
    # parts) look up names made afresh per call ("getquoted", "prepare"), so
    # the cache pins strings allocated anywhere in the burst's heap.
    sys._clear_type_cache()
    collected = gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    LOG.debug("collected %d objects and returned free heap pages to the system", collected)


def resident_mb() -> float | None:
    """This process's resident memory (MB), or None off Linux."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


#: Signals held back across `restart_in_place`; the new image's service
#: unblocks them once its handlers are in place (`unblock_stop_signals`).
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def restart_in_place() -> None:
    """Replace this process's image with the same command, started afresh.

    The last remedy for what `release_free_memory` cannot return: pages kept
    resident by a few small survivors each, scattered over the heap the burst
    grew (worker recycling, as gunicorn's max_requests or uWSGI's
    reload-on-rss do). The pid, and so the owner identity (host, pid, start
    time), stay. A stop signal arriving from here until the new service has
    its handlers stays pending (the signal mask survives exec), so it stops
    the new process gracefully instead of killing it half started."""
    block_stop_signals()
    argv = [sys.executable, *sys.orig_argv[1:]]
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        print(f"computeflow: cannot restart in place ({e}); exiting for the supervisor to restart", file=sys.stderr)


def block_stop_signals() -> None:
    """Hold SIGTERM/SIGINT pending (the mask survives exec)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """After the stop handlers are installed: deliver any stop signal held
    back by `restart_in_place` (a no-op in a process started afresh)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
