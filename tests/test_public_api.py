"""Each package's public API is its __init__, and dependencies point one way."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("package", ["models", "hardware", "edge_agent", "sync", "cloud_hub"])
def test_all_lists_every_public_name(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ lists missing {name}"
    public = {
        name for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith(package)
    }
    assert public <= exported, f"{package} exports names not in __all__: {public - exported}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("models", ("hardware", "sync", "edge_agent", "cloud_hub")),
        ("hardware", ("sync", "edge_agent", "cloud_hub")),
        ("sync", ("hardware", "edge_agent", "cloud_hub")),
        ("edge_agent", ("cloud_hub",)),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    for source in (ROOT / package).rglob("*.py"):
        text = source.read_text()
        for other in forbidden:
            assert f"import {other}" not in text and f"from {other}" not in text, (
                f"{source.relative_to(ROOT)} imports {other}"
            )
