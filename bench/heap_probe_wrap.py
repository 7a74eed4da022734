"""Run `python -m MODULE ARGS` with a thread that, when a file `dump-TAG`
appears in $MEMPROBE_DIR, collects, trims and writes TAG.json: RSS by kind of
mapping, mallinfo2, a walk of glibc's main heap (chunks in use, resident
pages, pages holding under 1 KiB of live chunks: the "pinned" ones) and what
those pinning chunks are (Python type, or C). bench/heap_probe.py runs a
conductor under it. One glibc arena ($MEMPROBE_ARENAS, default 1) so that
the main heap is the whole heap. Reading the heap this way is a diagnosis
tool, not production code: it trusts glibc 2.3x's chunk layout."""

import collections
import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time

DIR = os.environ["MEMPROBE_DIR"]
ARENAS = int(os.environ.get("MEMPROBE_ARENAS", "1"))
libc = ctypes.CDLL("libc.so.6")


class MI2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


libc.mallinfo2.restype = MI2


def rd(addr):
    return ctypes.c_size_t.from_address(addr).value


def known_types():
    out = {}
    seen = set()
    stack = [object]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[id(t)] = f"{t.__module__}.{t.__qualname__}"
        try:
            stack.extend(type.__subclasses__(t))
        except Exception:
            pass
    for o in gc.get_objects():
        if isinstance(o, type) and id(o) not in out:
            out[id(o)] = f"{o.__module__}.{o.__qualname__}"
    return out


def classify(u, size, types):
    for off, tag in ((0, ""), (16, "gc:"), (32, "gc+d:")):
        if off + 16 <= size:
            t = rd(u + off + 8)
            if t in types:
                return tag + types[t]
    b = ctypes.string_at(u, min(size, 48))
    txt = "".join(chr(c) if 32 <= c < 127 else "." for c in b)
    return "?" + txt[:48]


def heap_range():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return lo, hi


def resident_pages(lo, hi):
    n = (hi - lo) // 4096
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(lo // 4096 * 8)
        data = f.read(n * 8)
    import array

    a = array.array("Q")
    a.frombytes(data)
    return [bool(x >> 63) for x in a]


def smaps_kinds():
    kinds = collections.Counter()
    kind = "other"
    for line in open("/proc/self/smaps"):
        f = line.split()
        if "-" in f[0] and not f[0].endswith(":") and len(f) >= 5:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            path = f[5] if len(f) > 5 else ""
            kind = (
                "files"
                if path.startswith("/")
                else "heap"
                if path == "[heap]"
                else path or f"anon{'-big' if hi - lo >= 60 << 20 else ''}"
            )
        elif f[0] == "Rss:":
            kinds[kind] += int(f[1])
    return dict(kinds)


def anon_maps():
    res = []
    cur = None
    for line in open("/proc/self/smaps"):
        f = line.split()
        if "-" in f[0] and not f[0].endswith(":") and len(f) >= 5:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            path = f[5] if len(f) > 5 else ""
            cur = None if path else [hex(lo), (hi - lo) // 1024, f[1], 0]
            if cur:
                res.append(cur)
        elif f[0] == "Rss:" and cur is not None:
            cur[3] = int(f[1])
    return [r for r in res if r[3] > 0]


def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


def service_state():
    """Whether the conductor's service saw itself idle: what
    `_release_memory_after_burst` looks at."""
    for o in gc.get_objects():
        if type(o).__name__ == "ConductorService":
            return {
                "claims": len(o._claims),
                "operation_threads": o._pool.threads,
                "executor_threads": o.c._executor.threads,
                "ran_since_release": o._ran_since_release,
            }
    return None


def report(tag):
    service = service_state()
    c = gc.collect()
    libc.malloc_trim(0)
    lo, hi = heap_range()
    res = resident_pages(lo, hi)
    out = {"tag": tag, "service": service, "rss_kb": rss(), "collected": c, "heap": [lo, hi], "smaps": smaps_kinds()}
    mi = libc.mallinfo2()
    out["mallinfo2"] = {n: getattr(mi, n) for n, _ in MI2._fields_}
    # walk, storing into mmap-backed arrays (no malloc while walking the heap)
    import mmap

    cap = 4_000_000
    mm = mmap.mmap(-1, cap * 16)
    ch = memoryview(mm).cast("Q")
    npages = (hi - lo) // 4096
    pm = mmap.mmap(-1, npages * 4 + 4096)
    pu = memoryview(pm).cast("I")
    n = 0
    a = lo
    while a < hi - 16 and n < cap:
        sz = rd(a + 8) & ~7
        if sz < 32 or a + sz > hi:
            break
        nxt = a + sz
        iu = (rd(nxt + 8) & 1) if nxt + 16 <= hi else 0
        ch[2 * n] = a
        ch[2 * n + 1] = sz | iu
        n += 1
        if iu:
            p = (a - lo) // 4096
            e = a + sz
            while True:
                ps = lo + p * 4096
                pe = ps + 4096
                pu[p] += min(e, pe) - max(a, ps)
                if e <= pe:
                    break
                p += 1
        a = nxt
    out["walk_end"] = a
    # Only now the map of type addresses: made before the walk, its thousands of
    # address-sized int keys (a dict of ints and strings, which the collector
    # does not track) and the freed ints of its `seen` set (fast bins keep a
    # freed chunk's in-use bit and its type pointer) filled the heap's holes
    # and were counted as the burst's survivors (session 10's "pointer-sized ints").
    types = known_types()
    out["nchunks"] = n
    out["pages_total"] = len(res)
    out["pages_resident"] = sum(res)
    used = [pu[p] for p in range(npages)]
    out["pages_with_inuse"] = sum(1 for b in used if b)
    out["inuse_bytes"] = sum(used)
    out["sparse_pages"] = sum(1 for b in used if 0 < b < 1024)
    out["resident_no_inuse"] = sum(1 for p in range(npages) if res[p] and not used[p])
    by_kind = collections.Counter()
    by_kind_bytes = collections.Counter()
    samples = {}
    for i in range(n):
        a = ch[2 * i]
        v = ch[2 * i + 1]
        if not v & 1:
            continue
        sz = v & ~7
        if 0 < used[(a - lo) // 4096] < 1024:
            k = classify(a + 16, sz - 8, types)
            k2 = k if not k.startswith("?") else f"?size{sz}"
            by_kind[k2] += 1
            by_kind_bytes[k2] += sz
            samples.setdefault(k2, k)
    out["sparse_by_kind"] = [(k, c, by_kind_bytes[k], samples[k]) for k, c in by_kind.most_common(80)]
    samp = []
    import random

    for i in range(n):
        a = ch[2 * i]
        v = ch[2 * i + 1]
        if v & 1 and 0 < used[(a - lo) // 4096] < 1024:
            samp.append((a, v & ~7))
    random.seed(1)
    random.shuffle(samp)
    desc = collections.Counter()

    def d1(o):
        t = type(o).__name__
        if isinstance(o, str):
            import re as _re

            return "str " + _re.sub(r"[0-9a-f]", "x", o[:44])
        if isinstance(o, int):
            return f"int {o.bit_length()} bits"
        if isinstance(o, dict):
            return f"dict keys {sorted(map(str, o))[:4]}"
        if isinstance(o, (list, tuple, set)):
            return f"{t} of {sorted({type(x).__name__ for x in o})[:3]} len {len(o)}"
        if callable(o) and hasattr(o, "__qualname__"):
            return f"{t} {o.__qualname__}"
        if t == "method":
            return f"method {o.__func__.__qualname__}"
        if t == "cell":
            try:
                return f"cell of {type(o.cell_contents).__name__}"
            except ValueError:
                return "cell empty"
        return t

    for a, sz in samp[: (int(os.environ.get("MEMPROBE_SAMPLES", "1500")) if tag.startswith("after") else 0)]:
        k = classify(a + 16, sz - 8, types)
        if k.startswith("?"):
            desc[f"C size{sz}"] += 1
            continue
        if k not in ("builtins.str", "builtins.int"):
            desc[k] += 1
            continue
        o = ctypes.cast(a + 16, ctypes.py_object).value
        key = d1(o)
        desc[key] += 1
        del o
    out["sample_desc"] = desc.most_common(120)
    del samp
    hist = collections.Counter(min(b // 512, 8) for b in used if b)
    out["page_fill_hist_512B"] = sorted(hist.items())
    with open(os.path.join(DIR, tag + ".chunks"), "w") as f:
        for i in range(n):
            if ch[2 * i + 1] & 1:
                f.write(f"{ch[2 * i]:x} {ch[2 * i + 1] & ~7}\n")
    del ch, pu
    mm.close()
    pm.close()
    out["anon_maps"] = anon_maps()
    with open(os.path.join(DIR, tag + ".json"), "w") as f:
        json.dump(out, f, indent=1, default=str)


_baseline = []


def traced(tag):
    """With MEMPROBE_TRACEMALLOC=N: Python allocations still alive since the
    first dump, by where they were made, N frames deep (TAG.traced.txt).
    Tracing starts at the first dump; its own memory is not in that dump's
    figures. It slows the burst several times over: keep N small (5)."""
    import tracemalloc

    if not _baseline:
        tracemalloc.start(max(1, int(os.environ["MEMPROBE_TRACEMALLOC"])))
        _baseline.append(tracemalloc.take_snapshot())
        return
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.compare_to(_baseline[0], "traceback")
    with open(os.path.join(DIR, tag + ".traced.txt"), "w") as f:
        f.write(
            f"total {sum(st.size_diff for st in stats) / 1e6:.2f} MB, {sum(st.count_diff for st in stats)} blocks\n"
        )
        f.write("\nby file:\n")
        for st in snapshot.compare_to(_baseline[0], "filename")[:25]:
            f.write(f"  {st.size_diff / 1e3:8.0f} KB {st.count_diff:+7d} {st.traceback[0].filename}\n")
        for st in stats[:40]:
            f.write(f"\n{st.size_diff / 1e3:.0f} KB {st.count_diff:+d} blocks\n")
            f.write("\n".join(st.traceback.format()) + "\n")


def watch():
    done = set()
    while True:
        time.sleep(0.3)
        for name in os.listdir(DIR):
            if name.startswith("dump-") and name not in done:
                done.add(name)
                try:
                    report(name[5:])
                    if os.environ.get("MEMPROBE_TRACEMALLOC"):
                        traced(name[5:])
                except Exception as e:
                    open(os.path.join(DIR, name[5:] + ".err"), "w").write(repr(e))


libc.mallopt(-8, ARENAS)
import conductor.memory as _m  # noqa: E402 - after the arena cap

_orig = _m.limit_arenas
_m.limit_arenas = lambda arenas=ARENAS: _orig(arenas)
threading.Thread(target=watch, daemon=True, name="memprobe").start()
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
