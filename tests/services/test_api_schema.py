"""Schemathesis over the service's OpenAPI schema: requests generated from the schema
(valid and invalid, a bounded number per operation), none answered with a 5xx, and every
answer in the statuses and content types the schema declares."""

import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from services.api import ServiceSettings, create_app
from tests.services import api_store as H

MAX_EXAMPLES = 25  # per operation (valid and invalid requests); 14 operations, ~20 s in all
TOKEN = "schema-token"
# The schema is read at collection (schemathesis' lazy fixture loader does not work with
# pytest 9), from an app over a store the module fixture writes before the first test.
ROOT = Path(tempfile.mkdtemp(prefix="stratalens-schemathesis-"))
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(ServiceSettings(store=str(ROOT / "store"), token=TOKEN))
)


@pytest.fixture(scope="module", autouse=True)
def store():
    try:
        yield H.build(str(ROOT / "store"))
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_generated_request_reaches_a_server_error(case):
    headers = {"Authorization": f"Bearer {TOKEN}"}  # so that writes reach their validation
    case.call_and_validate(
        headers=headers,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
