"""No server: the operations table is the board, ownership is the claim."""

from __future__ import annotations

import datetime as dt

from conductor import ownership
from conductor.boards.base import Board, Claim
from persistence import operations
from persistence.models import utcnow
from persistence.session import Database


class EmbeddedBoard(Board):
    embedded = True

    def __init__(self, db: Database) -> None:
        self.db = db

    def post(self, op_id: str, created_at: dt.datetime) -> None:
        pass  # the committed operation row is the job

    def claim_next(self, skip: set[str]) -> Claim | None:
        now = utcnow()
        with self.db.session() as s:
            for op in operations.resumable(s):
                free = (
                    op.owner is None
                    or op.lease_expires_at is None
                    or op.lease_expires_at < now
                    or ownership.is_dead(op.owner)
                )
                if free and op.id not in skip:
                    return Claim(op.id)
        return None

    def heartbeat(self, claim: Claim) -> bool:
        return True  # the runner's LeaseKeeper renews the operation's lease

    def consume(self, claim: Claim) -> None:
        pass

    def release(self, claim: Claim) -> None:
        pass

    def waiting(self) -> list[tuple[str, bool]]:
        with self.db.session() as s:
            return [(op.id, op.owner is not None) for op in operations.resumable(s)]
