"""Fixtures of the conductor tests.

A board a test opens is closed after the test, in every module here: taskflow's
ZooKeeper and etcd clients run non-daemon threads of their own, and one board
left open (test_wakeups used `_board` without test_jobboard's closing fixture)
kept a finished CI run alive after its last test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conductor import boards, config

_opened: list[boards.Board] = []


@pytest.fixture(autouse=True)
def _close_boards() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _board(url: str, who: str, expiry: float = 30) -> boards.TaskflowBoard:
    conf = config.new_conf()
    conf([], project="computeflow", default_config_files=[])
    conf.set_override("jobboard", url, "conductor")
    board = boards.open_board(conf, who, db=None)
    board.expiry = expiry  # below the option's minimum: tests want sub-second claims
    _opened.append(board)
    return board
