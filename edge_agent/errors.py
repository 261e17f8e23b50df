"""Errors raised by the edge agent.

Hierarchy::

    EdgeAgentError          anything the agent refuses
    ├── SampleDataError     sample footage cannot be produced
    └── ImageReadError      an image file is missing or cannot be decoded
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error the edge agent raises."""


class SampleDataError(EdgeAgentError):
    """Sample footage cannot be produced (bad size, scikit-image missing)."""


class ImageReadError(EdgeAgentError):
    """An image file is missing or cannot be decoded."""
