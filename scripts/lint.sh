#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff's lint rules and its formatter's
# check (pyproject.toml, [tool.ruff]; `ruff format .` fixes the layout), mypy's
# type check ([tool.mypy]) and the import-cycle check
# (scripts/import_cycles.py). Needs scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python scripts/import_cycles.py  # no module-level import cycle between our modules
