"""Steps that talk to the guest agent: password, files, metadata.

A secret (password, file contents) reaches the step as a reference and is
decrypted here, in memory, for the driver call only. Setting a password or
injecting a file cannot be undone (the old value is not known to anyone), so
those steps have no revert; the record is restored by mark_done's revert.
"""

from __future__ import annotations

from typing import Any

from flows import runtime
from flows.steps.base import Step


def _reveal(reference: dict[str, Any]) -> str:
    rt = runtime.current()
    with rt.db.session() as s:
        return rt.secrets.reveal(s, reference)


class SetAdminPassword(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="set_admin_password", **kw)

    def execute(self, instance_uuid: str, host: str, password: dict[str, Any]) -> None:
        runtime.current().driver_for(host).set_admin_password(instance_uuid, _reveal(password))


class InjectFile(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="inject_file", **kw)

    def execute(self, instance_uuid: str, host: str, path: str, contents: dict[str, Any]) -> None:
        runtime.current().driver_for(host).inject_file(instance_uuid, path, _reveal(contents).encode())


class UpdateGuestMetadata(Step):
    """Apply the metadata diff; revert applies the inverse diff computed at submission."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="update_guest_metadata", **kw)

    def execute(self, instance_uuid: str, host: str, metadata_changes: dict[str, str | None]) -> None:
        runtime.current().driver_for(host).change_instance_metadata(instance_uuid, metadata_changes)

    def revert(self, instance_uuid: str, host: str, metadata_undo: dict[str, str | None], **_: object) -> None:
        runtime.current().driver_for(host).change_instance_metadata(instance_uuid, metadata_undo)
