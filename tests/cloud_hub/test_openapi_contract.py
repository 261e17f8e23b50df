"""The hub's API against its own OpenAPI document: a bounded schemathesis run.

Every operation, called with an admin token on examples generated from the schema,
must answer without a server error and only as documented: status codes, content
types and bodies that the schema declares (a 422's ``detail`` included). Where
acceptance depends on what JSON Schema cannot state (the bytes of a JPEG or of a bundle
zip, a cursor this hub issued), a refusal of schema-valid input is expected, so that one
heuristic check (``positive_data_acceptance``) is left out for those operations only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.service import HubService
from models import ModelStore
from tests.cloud_hub.hub_helpers import SECRET, hub_settings

pytestmark = pytest.mark.integration

ADMIN = "hub_admin-token-for-the-contract-run"
EXAMPLES = 25
REVOKES_THE_RUNS_TOKEN = "DELETE /v1/tokens/{token_id}"
OPAQUE_INPUT = frozenset({"GET /v1/events", "POST /v1/models", "POST /v1/infer/{model}"})


@schemathesis.serializer("application/zip", "image/jpeg", "image/png")
def _raw_bytes(context: schemathesis.SerializationContext, value: object) -> bytes:
    """Binary bodies go as they were generated."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def hub_app(tmp_path_factory: pytest.TempPathFactory, zoo_store: ModelStore
            ) -> Iterator[FastAPI]:
    tmp = tmp_path_factory.mktemp("contract")
    service = HubService(hub_settings(tmp, zoo_store.root, batch_autotune=False),
                         ingest=False)
    app = create_app(service)
    service.start()
    service.store.add_token(name="admin", role="admin", token_hash=hash_token(SECRET, ADMIN))
    try:
        yield app
    finally:
        service.stop()


@pytest.fixture(scope="module")
def api_schema(hub_app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", hub_app)


def test_every_operation_answers_as_documented(api_schema: schemathesis.BaseSchema) -> None:
    failures = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # Revoking tokens may revoke the run's own token (id 1): that operation goes last,
    # where the 401s that follow are still as documented.
    operations.sort(key=lambda operation: operation.label == REVOKES_THE_RUNS_TOKEN)
    for operation in operations:
        failure = _run_operation(operation)
        if failure is not None:
            failures[operation.label] = failure
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def _run_operation(operation: schemathesis.APIOperation) -> str | None:
    """Up to ``EXAMPLES`` generated calls of one operation; its failures, or ``None``."""
    excluded = ([schemathesis.checks.positive_data_acceptance]
                if operation.label in OPAQUE_INPUT else [])

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"},
                               excluded_checks=excluded)

    try:
        call()
    except (AssertionError, FailureGroup) as exc:
        return _describe(exc)
    return None


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "\n".join(_describe(e) for e in error.exceptions)
    return str(error)
