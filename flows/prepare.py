"""Submission-time checks shared by the operation families.

A family's `prepare(session, instance, values, operation_id)` runs inside the
transaction that takes the instance hold. It resolves names to records,
refuses bad requests before anything is written, and computes every value the
flow will need, including what its reverts restore (`prior_columns`), so that
no step ever has to read state a crash may have changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from flows.errors import NotFound
from flows.params import FlavorParams, ImageParams
from persistence import hosts
from persistence.models import Instance

#: prepare(session, instance, values, operation_id) -> extra stored params.
Prepare = Callable[[Session, Instance, dict[str, Any], str], dict[str, Any]]


def image_dict(s: Session, name: str) -> ImageParams:
    img = hosts.get_image(s, name)
    if img is None:
        raise NotFound("image", name)
    return {"name": img.name, "disk_format": img.disk_format, "size_mb": img.size_mb, "path": img.path}


def flavor_dict(s: Session, name: str) -> FlavorParams:
    f = hosts.get_flavor(s, name)
    if f is None:
        raise NotFound("flavor", name)
    return {
        "name": f.name,
        "vcpus": f.vcpus,
        "ram_mb": f.ram_mb,
        "root_gb": f.root_gb,
        "ephemeral_gb": f.ephemeral_gb,
        "swap_mb": f.swap_mb,
    }


def columns(inst: Instance, **new: object) -> dict[str, dict[str, object]]:
    """`set_columns` and `prior_columns` for a change of some instance columns."""
    prior = {k: _current(inst, k) for k in new}
    return {"set_columns": new, "prior_columns": prior}


def _current(inst: Instance, column: str) -> object:
    value = getattr(inst, column)
    if value is None and column in ("user_metadata", "system_metadata"):
        return {}
    if value is None and column in ("volumes", "vifs"):
        return []
    return value


def system_metadata(inst: Instance) -> dict[str, Any]:
    return dict(inst.system_metadata or {})
