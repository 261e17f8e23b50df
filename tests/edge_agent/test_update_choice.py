"""Which signed version a device takes for an announcement: a pure decision on offers."""

from __future__ import annotations

import pytest

from edge_agent.errors import UpdateRefusedError
from edge_agent.updates import DeviceFit, ModelOffer, choose_offer

pytestmark = pytest.mark.unit

X86 = DeviceFit(runtimes=frozenset({"tflite", "onnx"}), hardware=frozenset({"x86_64"}))
MIB = 1024 * 1024


def _offer(version: str, *hardware: str, runtime: str = "tflite",
           length: int = MIB) -> ModelOffer:
    return ModelOffer(path=f"models/m/m-{version}.zip", name="m", version=version,
                      runtime=runtime, hardware=hardware or ("any",), length=length,
                      sha256="0" * 64, golden={})


def _choose(offers: list[ModelOffer], announced: str, installed: str | None = "1.0.0",
            ) -> str | None:
    chosen = choose_offer(offers, name="m", announced=announced, installed=installed, fit=X86,
                          max_bytes=100 * MIB)
    return None if chosen is None else chosen.version


def test_the_highest_fitting_build_up_to_the_announced_version() -> None:
    offers = [_offer("2.0.0", "edgetpu"), _offer("1.3.0", "x86_64"), _offer("1.2.0"),
              _offer("2.1.0", "x86_64"), _offer("1.4.0", runtime="onnx"),
              _offer("1.5.0", length=200 * MIB)]
    assert _choose(offers, "1.3.0") == "1.3.0"
    assert _choose(offers, "2.0.0") == "1.4.0"  # 2.1.0 is not announced yet
    assert _choose(offers, "2.1.0") == "2.1.0"
    assert _choose(offers, "2.0.0", installed=None) == "1.4.0"
    assert _choose(offers, "1.3.0", installed="1.3.0") is None


@pytest.mark.parametrize(("offers", "announced", "kind"), [
    ([_offer("0.9.0")], "0.9.0", "rollback"),
    ([_offer("1.2.0")], "1.3.0", "unavailable"),
    ([_offer("2.0.0", "edgetpu")], "2.0.0", "hardware"),
    ([_offer("2.0.0", runtime="litert-gpu")], "2.0.0", "runtime"),
    ([_offer("2.0.0", length=101 * MIB)], "2.0.0", "too-long"),
    ([_offer("0.9.0"), _offer("2.0.0", "edgetpu")], "2.0.0", "hardware"),
])
def test_what_is_refused_and_why(offers: list[ModelOffer], announced: str, kind: str) -> None:
    with pytest.raises(UpdateRefusedError) as caught:
        _choose(offers, announced)
    assert caught.value.kind == kind
