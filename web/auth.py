"""Tokens and roles, and the browser's cookie and CSRF rules.

A request carries a token as `Authorization: Bearer TOKEN` (API clients) or
in the HttpOnly, SameSite=Strict cookie set by the login form (browsers). The
configuration holds only SHA-256 hashes ([web] tokens = ROLE:SHA256HEX).

A browser POST (authenticated by the cookie) must also carry the CSRF token:
the login sets a second, script-readable cookie with a random value, and the
form field `csrf` or the header `X-CSRF-Token` must repeat it (double
submit). A Bearer request needs no CSRF token: a browser never adds that
header by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

READER, OPERATOR, ADMIN = "reader", "operator", "admin"
ROLES = (READER, OPERATOR, ADMIN)  # each may do what the ones before it may
TOKEN_COOKIE, CSRF_COOKIE, CSRF_HEADER, CSRF_FIELD = "cf_token", "cf_csrf", "x-csrf-token", "csrf"
_ENTRY = re.compile(r"^(reader|operator|admin):([0-9a-f]{64})$")


class BadTokenConfig(ValueError):
    pass


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token (surrounding whitespace and newline dropped)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Tokens:
    """The configured hashes and their roles."""

    by_hash: dict[str, str]

    @classmethod
    def parse(cls, entries: list[str]) -> Tokens:
        by_hash = {}
        for entry in entries:
            m = _ENTRY.match(entry.strip().lower())
            if m is None:
                raise BadTokenConfig(
                    f"[web] tokens: {entry[:20]!r}... is not ROLE:SHA256HEX with ROLE one of "
                    f"{', '.join(ROLES)} (hash a token with `computeflow serve --hash-token`)"
                )
            by_hash[m.group(2)] = m.group(1)
        return cls(by_hash)

    def role_of(self, token: str | None) -> str | None:
        """The role of a token; None for none or an unknown one."""
        if not token:
            return None
        digest = hash_token(token)
        for known, role in self.by_hash.items():  # constant time per entry
            if hmac.compare_digest(known, digest):
                return role
        return None


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, given: str | None) -> bool:
    return bool(cookie) and bool(given) and hmac.compare_digest(cookie, given)
