"""docs/support-matrix.md is generated from the code and must be current."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_support_matrix_is_current():
    r = subprocess.run(
        [sys.executable, "scripts/support_matrix.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr + " (regenerate it: scripts/support_matrix.py)"


def test_every_operation_names_the_driver_methods_it_uses():
    from drivers.base import ComputeDriver
    from flows import catalog

    for kind in catalog.CATALOG.values():
        assert kind.uses, kind.name
        assert all(callable(getattr(ComputeDriver, m, None)) for m in kind.uses), kind.name
