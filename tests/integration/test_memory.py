"""A long-running conductor stays flat in memory.

taskflow's stock SQLAlchemy backend grows ~5 MB per flow that is never
returned; ours shares one table set per backend. One process runs many
spawn+destroy pairs; RSS after warm-up must not grow with the count.
"""

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

SCRIPT = r"""
import gc, json, sys, tempfile
from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import schema
from persistence.session import Database

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

url, n = sys.argv[1], int(sys.argv[2])
schema.upgrade(Database(url))  # as `computeflow db upgrade`: only the embedded default is implicit
conf = config.load([], overrides={("DEFAULT", "state_path"): tempfile.mkdtemp(),
                                  ("database", "connection"): url})
c = Conductor(conf)
c.add_host("mem", vcpus=64, ram_mb=1 << 20, disk_gb=1 << 16)
samples = []
for i in range(n):
    assert c.run(c.submit_spawn(SpawnRequest(name=f"m{i}", flavor="m1.tiny", image="cirros",
                                             host="mem"))).state == "SUCCEEDED"
    assert c.run(c.submit_destroy(f"m{i}")).state == "SUCCEEDED"
    if i % 20 == 19:
        gc.collect()
        samples.append(rss_mb())
print(json.dumps(samples))
"""


def test_rss_is_flat_over_many_operations(sqlite_url, tmp_path):
    # Separate file so the subprocess owns its database.
    url = f"sqlite:///{tmp_path}/mem.sqlite"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, "160"], cwd=REPO, capture_output=True, text=True, timeout=600, check=True
    )
    samples = [float(x) for x in out.stdout.split("[", 1)[1].rstrip("]\n").split(",")]
    warm, last = samples[1], samples[-1]  # after 40 pairs, after 160 pairs
    # The stock backend would add ~5 MB per flow: 240 flows -> ~1.2 GB.
    assert last - warm < 15, f"RSS grew {last - warm:.1f} MB over 240 flows: {samples}"
