"""Reversible steps. Each calls one driver or database change in `execute` and
undoes it in `revert`; both are idempotent and never rely on `result`, because
taskflow re-runs a step that was RUNNING at a crash and wipes results after a
failed revert."""
