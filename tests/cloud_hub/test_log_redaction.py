"""No API token reaches a log line."""

from __future__ import annotations

import logging

import pytest

from cloud_hub.api.auth import RedactTokens, new_token, redact_tokens

pytestmark = pytest.mark.unit


def test_tokens_are_redacted_wherever_they_appear() -> None:
    token = new_token()
    assert redact_tokens(f'"GET /dashboard/login?token={token} HTTP/1.1" 303') == (
        '"GET /dashboard/login?token=[redacted] HTTP/1.1" 303')
    assert redact_tokens("GET /x?a=1&token=tok-admin&b=2") == "GET /x?a=1&token=[redacted]&b=2"
    assert redact_tokens("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact_tokens(f"issued {token} to ops") == "issued [redacted] to ops"


def test_metric_names_and_plain_text_stay() -> None:
    text = "hub_verdict_latency_seconds_bucket rose; see /v1/events?limit=5"
    assert redact_tokens(text) == text


def test_the_filter_rewrites_a_record_formatted_from_its_arguments() -> None:
    token = new_token()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", f"/dashboard/login?token={token}",
                                "1.1", 303), None)
    assert RedactTokens().filter(record)
    assert token not in record.getMessage()
    assert "/dashboard/login?token=[redacted]" in record.getMessage()
