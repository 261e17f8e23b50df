"""The edge agent: runs local models on a camera box or gateway and escalates to the hub.

Public API: sample footage for tests, demos and benchmarks, and the agent's errors.
"""

from __future__ import annotations

from edge_agent.errors import EdgeAgentError, ImageReadError, SampleDataError
from edge_agent.footage import Frame, SampleFootage, TruthObject
from edge_agent.images import read_image

__all__ = [
    "EdgeAgentError",
    "Frame",
    "ImageReadError",
    "SampleDataError",
    "SampleFootage",
    "TruthObject",
    "read_image",
]
