"""Where a burst's memory stays: one conductor under bench/heap_probe_wrap.py.

    PYTHONPATH=. .venv/bin/python bench/heap_probe.py [--ops 300] [--wait 5] [--bursts 1]

As bench/fleet_bench.py (PostgreSQL + Redis, fake hosts, SIGSTOP while the
burst is submitted), with one glibc arena; dumps the heap at the warm start
and after each burst (idle threads ended, a heartbeat later), prints one line
each and leaves the JSON reports in --out ("sample_desc": a sample of the
live chunks on pinned pages, by kind)."""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import json
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet_bench as fb
from fleet_bench import FleetBench, status, start_settled, settle, wait_for, scratch_database
import sqlalchemy as sa
from conductor.api import SpawnRequest
from persistence import operations
from persistence.models import Operation

ap = argparse.ArgumentParser()
ap.add_argument("--ops", type=int, default=300)
ap.add_argument("--wait", type=float, default=5)
ap.add_argument("--bursts", type=int, default=1)
ap.add_argument("--out", default="/tmp/heap_probe")
ap.add_argument("--arenas", default="1")
ap.add_argument("--pymalloc", action="store_true")
a = ap.parse_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
for f in out.iterdir():
    f.unlink()
args = argparse.Namespace(pymalloc=a.pymalloc, sample_cpu=None, hosts=max(1, -(-a.ops // 10)), jobboard="redis")


class P(FleetBench):
    def start(self, name, extra=""):
        env = dict(os.environ, MEMPROBE_DIR=str(out), MEMPROBE_ARENAS=a.arenas)
        if not a.pymalloc:
            env["PYTHONMALLOC"] = "malloc"
        p = subprocess.Popen(
            [
                sys.executable,
                str(fb.REPO / "bench" / "heap_probe_wrap.py"),
                "conductor.cli",
                "--config-file",
                # what it probes is the memory a burst leaves: no restart in place
                str(self.conf(name, extra + "[conductor]\nrecycle_rss_growth = 0\n")),
                "conductor",
            ],
            cwd=fb.REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(out / "stderr.txt", "w"),
        )
        self.procs.append(p)
        return p


def dump(tag):
    (out / f"dump-{tag}").touch()
    wait_for(lambda: (out / f"{tag}.json").exists() or (out / f"{tag}.err").exists(), 900, tag)
    time.sleep(0.2)
    if (out / f"{tag}.err").exists():
        print("ERR", (out / f"{tag}.err").read_text())
    return json.loads((out / f"{tag}.json").read_text())


def open_files(pid):
    """The conductor's open file descriptors: sockets (database, board) and others."""
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    ss = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    pg_ports = []
    for line in ss.splitlines():
        if f"pid={pid}," in line:
            port = "tcp to " + line.split()[4].rsplit(":", 1)[1]
            kinds[port] = kinds.get(port, 0) + 1
            if port == "tcp to 5432":
                pg_ports.append(int(line.split()[3].rsplit(":", 1)[1]))
    if pg_ports:  # which of the conductor's pools hold them, and doing what
        with c.db.session() as s:
            rows = s.execute(
                sa.text(
                    "SELECT application_name, state, left(query, 60) FROM pg_stat_activity "
                    "WHERE client_port = ANY(:ports)"
                ),
                {"ports": pg_ports},
            ).all()
        for row in rows:
            key = "pg " + " | ".join(str(x) for x in row)
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


def show(d):
    m = d["mallinfo2"]
    maps = ", ".join(f"{k}:{v // 1024}" for k, v in sorted(d["smaps"].items()) if v > 512)
    print(
        f"  {d['tag']}: RSS {d['rss_kb'] / 1024:.1f} MB, MB by mapping {{{maps}}}; heap pages "
        f"{d['pages_total']}, resident {d['pages_resident']}, holding live chunks {d['pages_with_inuse']}, "
        f"under 1 KiB live (pinned) {d['sparse_pages']}; live {d['inuse_bytes'] / 1e6:.1f} MB; "
        f"mallinfo2 arena {m['arena'] / 1e6:.1f} in use {m['uordblks'] / 1e6:.1f} free {m['fordblks'] / 1e6:.1f}",
        flush=True,
    )


with scratch_database("cf_memprobe", "redis") as (name, db_url):
    with tempfile.TemporaryDirectory(prefix="cf-memprobe-") as tmp:
        b = P(args, Path(tmp), db_url, name)
        b.wait, b.max_operations = a.wait, None
        c = b.reset()
        try:
            procs = start_settled(b, c, ["m0"])
            pid = procs[0].pid
            show(dump("start"))
            print("  open files at the start:", open_files(pid), flush=True)
            for k in range(a.bursts):
                procs[0].send_signal(signal.SIGSTOP)
                with c.db.session() as s:
                    submitted = s.scalar(sa.select(sa.func.max(Operation.created_at)))
                for i in range(a.ops):
                    c.submit_spawn(
                        SpawnRequest(name=f"b{k}vm{i}", flavor="m1.tiny", image="cirros", host=f"h{i % args.hosts + 1}")
                    )
                t0 = time.time()
                procs[0].send_signal(signal.SIGCONT)

                def finished(submitted=submitted):
                    with c.db.session() as s:
                        return (
                            s.scalar(
                                sa.select(sa.func.count())
                                .select_from(Operation)
                                .where(Operation.state.in_(operations.FINAL_STATES), Operation.created_at > submitted)
                            )
                            == a.ops
                        )

                wait_for(finished, 3600, "burst")
                print(
                    f"burst {k}: {time.time() - t0:.1f} s, peak VmHWM {status(pid)['VmHWM'] / 1024:.0f} MB", flush=True
                )
                settle(b, procs)
                show(dump(f"after{k}"))
                print(f"  open files after burst {k}:", open_files(pid), flush=True)
            b.stop_all()
        finally:
            c.close()
