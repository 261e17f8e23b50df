"""API tokens: random, shown once, stored as an HMAC keyed with the hub's secret."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
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


# A token in a query (the dashboard's first visit carries ``?token=``) or in a header
# value, and anything shaped like one of ours ("hub_" and 43 URL-safe characters; not
# a metric name), wherever it appears in a log line.
_TOKEN_TEXT = re.compile(
    r"(?P<key>[?&](?:access_)?token=|bearer\s+)[^&\s\"']+|hub_[A-Za-z0-9_-]{40,}",
    re.IGNORECASE)


def redact_tokens(text: str) -> str:
    """``text`` with every API token replaced by ``[redacted]``."""
    return _TOKEN_TEXT.sub(lambda m: f"{m.group('key') or ''}[redacted]", text)


class RedactTokens(logging.Filter):
    """A logging filter that takes API tokens out of a record's message (and its
    arguments, which it formats first): uvicorn's access log records every query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_tokens(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACT = RedactTokens()


def redact_tokens_in_logs() -> None:
    """Put the token filter on every handler of the root and uvicorn loggers (a
    handler's filter sees records from child loggers too, a logger's does not)."""
    for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.addFilter(_REDACT)
        for handler in logger.handlers:
            handler.addFilter(_REDACT)
