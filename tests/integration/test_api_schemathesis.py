"""The REST API against its own OpenAPI document, checked by schemathesis on a real gunicorn server.

The document is fetched from the running server (``/api/v1/openapi.json``). Every response below
must be no 5xx and must match the document: a documented status code, a documented content type,
and a body that validates against the response schema.

* Fuzzing: for every operation, schemathesis generates requests that match the document
  (positive) and requests that break it (negative), sent with an admin client's bearer token; the
  operations with path parameters are also fuzzed against objects that exist (a certificate, a
  pending request), since random serials and ids only ever reach the 404 branch.
* Success paths: random CSRs never make a certificate, so the 201/202/403 answers (and the PEM
  and DER representations) are driven by hand-made cases validated by the same checks.

Bounded in time: ``MAX_EXAMPLES`` generated cases per operation and mode, no per-example deadline.
The operations are driven through schemathesis' Python API (``as_strategy`` under Hypothesis),
one test per operation and mode. ``schemathesis.pytest.from_fixture`` (the lazy-schema plugin)
is not used: schemathesis 4.32 fails on pytest 9.2 with ``'Function' object has no attribute
'_nodeid'``.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from helpers import make_csr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from web.api.openapi import openapi_document

pytestmark = [pytest.mark.hsm, pytest.mark.db]

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_PATHS = openapi_document()["paths"]
#: The operations of the document this code base builds; the live one must list the same.
OPERATIONS = sorted(f"{method.upper()} {path}" for path, ops in _PATHS.items() for method in ops)
#: Operations with something to break (a body or query parameters): fuzzed with invalid data too.
#: With the token fixed, the others have only an untyped path parameter, or nothing, to negate.
NEGATABLE = sorted(
    f"{method.upper()} {path}"
    for path, ops in _PATHS.items()
    for method, op in ops.items()
    if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", ()))
)
FUZZ = [pytest.param(op, GenerationMode.POSITIVE, id=f"{op}-positive") for op in OPERATIONS]
FUZZ += [pytest.param(op, GenerationMode.NEGATIVE, id=f"{op}-negative") for op in NEGATABLE]


@pytest.fixture(scope="module")
def live_database_backend() -> str:
    return "sqlite"  # the document does not depend on the store; one backend keeps this bounded


@pytest.fixture(scope="module")
def live_config_extra() -> str:
    # A profile that keeps requests for approval, so that the 202 answer is reachable too.
    return """
[profiles.approval]
dns_names = ["."]
requires_approval = true
"""


@pytest.fixture(scope="module")
def tokens(live_api) -> dict[str, str]:
    return {
        "admin": live_api.add_client("fuzz-admin", ["admin"]),
        "enroller": live_api.add_client("fuzz-enroller", ["enroll"]),
    }


def _auth(tokens: dict[str, str], who: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


@pytest.fixture(scope="module")
def api_schema(live_api):
    return schemathesis.openapi.from_url(live_api.url("/api/v1/openapi.json"), timeout=10)


@pytest.fixture(scope="module")
def existing(live_api, tokens) -> dict[str, str]:
    """Objects the fuzzer's path parameters may point at: a certificate and a pending request."""

    def enroll(profile: str, name: str) -> dict[str, Any]:
        body = {"csr": make_csr([name], cn=None).decode(), "profile": profile}
        resp = requests.post(
            live_api.url("/api/v1/certificates"),
            json=body,
            headers=_auth(tokens, "enroller"),
            timeout=10,
        )
        assert resp.status_code in (201, 202), resp.text
        return resp.json()

    return {
        "serial": enroll("server", "seed.example.test")["serial"],
        "request_id": enroll("approval", "pending.example.test")["id"],
    }


def _operation(api_schema, label: str):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"the live document lacks {label}"
    return operation


def test_live_document_lists_the_operations_under_test(api_schema):
    live = sorted(
        f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()
    )
    assert live == OPERATIONS


@pytest.mark.parametrize(("label", "mode"), FUZZ)
def test_fuzzed_requests_get_documented_answers_and_never_a_server_error(
    api_schema, tokens, existing, label: str, mode: GenerationMode
):
    operation = _operation(api_schema, label)
    headers = _auth(tokens)
    strategies = [operation.as_strategy(generation_mode=mode, headers=headers)]
    known = {k: v for k, v in existing.items() if f"{{{k}}}" in operation.path}
    if known:
        strategies.append(
            operation.as_strategy(generation_mode=mode, headers=headers, path_parameters=known)
        )

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )
    def exercise(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

    exercise()


def _call(operation, status: int, **kwargs: Any) -> requests.Response:
    """One hand-made case: sent, checked like the fuzzed ones, and its status pinned."""
    case = operation.Case(**kwargs)
    resp = case.call_and_validate(checks=CHECKS, timeout=10)
    assert resp.status_code == status, resp.text[:500]
    return resp


def test_enrollment_answers_match_the_document(api_schema, tokens):
    enroll = _operation(api_schema, "POST /certificates")
    admin, enroller = _auth(tokens), _auth(tokens, "enroller")

    def body(name: str, profile: str = "server", **extra: Any) -> dict[str, Any]:
        return {"csr": make_csr([name], cn=None).decode(), "profile": profile, **extra}

    issued = _call(
        enroll,
        201,
        headers=admin,
        body=body("doc.example.test", metadata={"owner": "team-a"}),
        media_type="application/json",
    )
    assert issued.json()["metadata"] == {"owner": "team-a"}
    pem = _call(
        enroll,
        201,
        headers={**admin, "Accept": "application/pem-certificate-chain"},
        body=body("pem.example.test"),
        media_type="application/json",
    )
    assert pem.text.count("BEGIN CERTIFICATE") == 2
    pending = _call(
        enroll,
        202,
        headers=enroller,
        body=body("approve.example.test", "approval", validity_days=30),
        media_type="application/json",
    )
    _call(
        enroll,
        403,
        headers=admin,
        body=body("not-a-san.example.test", validity_days=3650),
        media_type="application/json",
    )
    _call(enroll, 401, body=body("anon.example.test"), media_type="application/json")

    request_id = pending.json()["id"]
    _call(
        _operation(api_schema, "GET /requests/{request_id}"),
        200,
        headers=enroller,
        path_parameters={"request_id": request_id},
    )
    approved = _call(
        _operation(api_schema, "POST /requests/{request_id}/approve"),
        201,
        headers=admin,
        path_parameters={"request_id": request_id},
    )
    assert approved.json()["profile"] == "approval"
    _call(
        _operation(api_schema, "POST /requests/{request_id}/reject"),
        409,
        headers=admin,
        path_parameters={"request_id": request_id},
        body={"reason": "too late"},
        media_type="application/json",
    )
    withdrawn = _call(
        enroll,
        202,
        headers=enroller,
        body=body("withdraw.example.test", "approval"),
        media_type="application/json",
    )
    rejected = _call(
        _operation(api_schema, "POST /requests/{request_id}/reject"),
        200,
        headers=enroller,
        path_parameters={"request_id": withdrawn.json()["id"]},
        body={"reason": "changed my mind"},
        media_type="application/json",
    )
    assert rejected.json()["state"] == "rejected"


def test_inventory_answers_match_the_document(api_schema, tokens, existing):
    admin = _auth(tokens)
    one = _operation(api_schema, "GET /certificates/{serial}")
    serial = {"serial": existing["serial"]}
    for accept in (
        "application/json",
        "application/pem-certificate-chain",
        "application/x-pem-file",
        "application/pkix-cert",
    ):
        resp = _call(one, 200, headers={**admin, "Accept": accept}, path_parameters=serial)
        assert resp.headers["content-type"][0].split(";")[0] == accept
    _call(one, 406, headers={**admin, "Accept": "text/html"}, path_parameters=serial)

    listing = _operation(api_schema, "GET /certificates")
    first = _call(listing, 200, headers=admin, query={"limit": 1, "status": "issued"})
    cursor = first.json()["next_cursor"]
    assert cursor and 'rel="next"' in first.headers["link"][0]
    _call(listing, 200, headers=admin, query={"limit": 1, "cursor": cursor})
    _call(listing, 200, headers=admin, query={"expiring_within": "400d", "name": "example"})
    _call(_operation(api_schema, "GET /profiles"), 200, headers=admin)
    _call(_operation(api_schema, "GET /cas"), 200, headers=admin)
