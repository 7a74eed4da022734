"""taskflow's SQL backend module, which our backend (taskflow_backend.py)
subclasses, without its alembic migrations loaded up front.

`impl_sqlalchemy` imports its `migration` module at import, and with it
alembic, mako and pygments: ~0.15 s of every CLI command's start, for
`upgrade()`, which our backend replaces (our schema, persistence/schema.py,
creates taskflow's tables). The migration module is registered as a lazy
module (importlib.util.LazyLoader): it loads on first attribute access, so
anything that does use it still gets the real one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

_MIGRATION = "taskflow.persistence.backends.sqlalchemy.migration"


def _lazy(name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None  # part of taskflow
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # defers the module's body to first use
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    return module


def load() -> ModuleType:
    """taskflow.persistence.backends.impl_sqlalchemy."""
    _lazy(_MIGRATION)
    return importlib.import_module("taskflow.persistence.backends.impl_sqlalchemy")
