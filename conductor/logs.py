"""Logging for every computeflow command: a file under state_path, and stderr
with --debug. A filter masks any secret value the process has seen, as a last
line of defence behind the rule that secrets are never formatted into logs."""

from __future__ import annotations

import logging
import os
import threading

_secrets: set[str] = set()
_lock = threading.Lock()
MASK = "***"


def remember_secret(value: str | None) -> None:
    if value:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for v in values:
        text = text.replace(v, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(log_file: str | None, debug: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = RedactingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if debug:
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        root.addHandler(sh)
    # taskflow logs every transition at DEBUG, with results; keep it at INFO.
    logging.getLogger("taskflow").setLevel(logging.INFO if not debug else logging.DEBUG)
