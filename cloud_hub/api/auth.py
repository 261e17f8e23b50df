"""API tokens: random, shown once, stored as an HMAC keyed with the hub's secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


def new_token() -> str:
    """A fresh API token."""
    return "hub_" + secrets.token_urlsafe(32)


def hash_token(secret_key: str, token: str) -> str:
    """What the store keeps of a token."""
    return hmac.new(secret_key.encode(), token.encode(), hashlib.sha256).hexdigest()
