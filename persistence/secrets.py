"""Secret operation parameters, encrypted at rest and deleted when done.

taskflow stores `store` values, factory arguments and exception messages in
clear text, so a secret never goes there: the operation's parameters carry a
reference (`{"secret_ref": ...}`), the ciphertext lives here, and the one step
that needs the value decrypts it in memory. When the operation ends the row is
deleted; until then a database dump shows only Fernet ciphertext.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session

from persistence.errors import PersistenceError
from persistence.models import Secret


class SecretUnavailable(PersistenceError):
    """The secret key or a stored secret cannot be read (the message says which)."""


class SecretBox:
    def __init__(self, key_file: str) -> None:
        self.key_file = key_file
        self._fernet: Fernet | None = None

    def _box(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(self._load_or_create_key())
        return self._fernet

    def _load_or_create_key(self) -> bytes:
        try:
            with open(self.key_file, "rb") as f:
                return f.read().strip()
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(os.path.abspath(self.key_file)), exist_ok=True)
        key = Fernet.generate_key()
        try:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race; use its key
            with open(self.key_file, "rb") as f:
                return f.read().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key

    def store(self, s: Session, operation_id: str, value: str) -> dict[str, Any]:
        ref = str(uuid.uuid4())
        s.add(Secret(ref=ref, operation_id=operation_id, ciphertext=self._box().encrypt(value.encode())))
        return {"secret_ref": ref}

    def reveal(self, s: Session, reference: dict[str, Any]) -> str:
        ref = reference["secret_ref"]
        row = s.get(Secret, ref)
        if row is None:
            raise SecretUnavailable(f"secret {ref} no longer exists (its operation ended)")
        try:
            return self._box().decrypt(row.ciphertext).decode()
        except InvalidToken:
            raise SecretUnavailable(f"secret {ref} cannot be decrypted with {self.key_file}: wrong key") from None

    @staticmethod
    def purge(s: Session, operation_id: str) -> None:
        s.execute(sa.delete(Secret).where(Secret.operation_id == operation_id))


def is_reference(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"secret_ref"}
