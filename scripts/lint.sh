#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff's lint rules (pyproject.toml,
# [tool.ruff]) and mypy's type check ([tool.mypy]). Needs scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
