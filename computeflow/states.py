"""The states an instance record shows, as named constants.

`vm_state` says what the instance is (as Nova's vm_states: stable between
operations); `task_state` says what the operation holding it is doing (None
when no operation holds it). The values are plain strings, stored as they
are; these names exist so a state is found by search and mistyped nowhere.
The guest's power state is the driver's `drivers.base.PowerState`.
"""

from __future__ import annotations

from typing import Final


class VmState:
    BUILDING: Final = "building"
    ACTIVE: Final = "active"
    STOPPED: Final = "stopped"
    PAUSED: Final = "paused"
    SUSPENDED: Final = "suspended"
    RESCUED: Final = "rescued"
    RESIZED: Final = "resized"  # moved, waiting for confirm-resize or revert-resize
    SOFT_DELETED: Final = "soft_deleted"
    DELETED: Final = "deleted"
    ERROR: Final = "error"


class TaskState:
    SCHEDULING: Final = "scheduling"
    SPAWNING: Final = "spawning"
    DELETING: Final = "deleting"
    REBUILDING: Final = "rebuilding"
    RESCUING: Final = "rescuing"
    UNRESCUING: Final = "unrescuing"
    RESIZE_MIGRATING: Final = "resize_migrating"
    MIGRATING: Final = "migrating"
    IMAGE_SNAPSHOT: Final = "image_snapshot"
    RECONCILING: Final = "reconciling"
    POWERING_OFF: Final = "powering-off"
    POWERING_ON: Final = "powering-on"
    PAUSING: Final = "pausing"
    UNPAUSING: Final = "unpausing"
    SUSPENDING: Final = "suspending"
    RESUMING: Final = "resuming"
    SOFT_DELETING: Final = "soft-deleting"
    RESTORING: Final = "restoring"
    REBOOTING: Final = "rebooting"
    RESIZE_CONFIRMING: Final = "resize_confirming"
    RESIZE_REVERTING: Final = "resize_reverting"
    ATTACHING_VOLUME: Final = "attaching_volume"
    DETACHING_VOLUME: Final = "detaching_volume"
    SWAPPING_VOLUME: Final = "swapping_volume"
    ATTACHING_INTERFACE: Final = "attaching_interface"
    DETACHING_INTERFACE: Final = "detaching_interface"
    UPDATING_PASSWORD: Final = "updating_password"
    INJECTING_FILE: Final = "injecting_file"
    UPDATING_METADATA: Final = "updating_metadata"
