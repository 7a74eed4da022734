"""The live step output (`Progress`, what spawn, resume and retry-revert
print): step moves only, never the flow's own state changes."""

from __future__ import annotations

from conductor.cli_support import Progress
from conductor.runner import StepEvent


def test_flow_level_states_are_not_printed(capsys):
    show = Progress(True)
    for state in ("RESUMING", "RUNNING", "SUSPENDED", "REVERTING"):
        show(StepEvent("op", "(flow)", state))
    show(StepEvent("op", "define_guest", "REVERTED"))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].split()[-2:] == ["define_guest", "REVERTED"], lines
