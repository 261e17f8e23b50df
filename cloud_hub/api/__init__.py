"""The hub's web API and dashboard."""

from __future__ import annotations

from cloud_hub.api.app import create_app

__all__ = ["create_app"]
