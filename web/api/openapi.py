"""The OpenAPI 3.1 document of ``/api/v1``; schemas come from the pydantic models in ``schemas``."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from web.api import schemas as s

_MODELS: list[type[BaseModel]] = [
    s.EnrollIn,
    s.RevokeIn,
    s.ApproveIn,
    s.RejectIn,
    s.CertificateOut,
    s.CertificatePage,
    s.ProfileOut,
    s.CaOut,
    s.RequestOut,
    s.AuditEventPage,
    s.AuditVerifyOut,
    s.Problem,
]
_REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _json(schema: dict[str, Any], description: str, **headers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = {
            k: {"schema": {"type": "string"}, "description": v} for k, v in headers.items()
        }
    return out


_COMMON = {
    "401": _problem("no or a bad bearer token"),
    "403": _problem("missing role, or the policy denies the request"),
    # gunicorn refuses a request line over limit_request_line (4094 bytes by default) before the
    # app sees it, with its own text/html page: long or non-ASCII filters can get there.
    "414": {"description": "request line too long (answered by the HTTP server, not a problem)"},
    "503": _problem("the HSM or database is unavailable; retry after Retry-After seconds"),
}


def _list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref(name)}},
        "additionalProperties": False,
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1, "maxLength": 256},
    }


def _path(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once per process)."""
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
    enroll_schema = s.EnrollIn.model_json_schema(ref_template=_REF, mode="validation")
    enroll_schema.pop("$defs", None)
    schemas["EnrollIn"] = enroll_schema
    revoke_schema = s.RevokeIn.model_json_schema(ref_template=_REF, mode="validation")
    revoke_schema.pop("$defs", None)
    schemas["RevokeIn"] = revoke_schema
    cert_ok = {
        "description": "the certificate (JSON), or the PEM chain for Accept: application/pem-certificate-chain",
        "headers": {"Location": {"schema": {"type": "string"}}},
        "content": {
            "application/json": {"schema": _ref("CertificateOut")},
            "application/pem-certificate-chain": {"schema": {"type": "string"}},
        },
    }
    serial_param = _path("serial")
    request_param = _path("request_id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hsmca REST enrollment API",
            "version": "1",
            "description": (
                "Certificates from an HSM-backed private CA under an issuance policy. "
                "Authenticate with 'Authorization: Bearer <token>' (hsmca client add). "
                "Errors are RFC 9457 problem documents with a type per kind "
                "(urn:hsmca:problem:policy-denied lists every violated rule)."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/certificates": {
                "post": {
                    "operationId": "enroll",
                    "summary": "Request a certificate from a CSR under a profile",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("EnrollIn")}},
                    },
                    "responses": {
                        "201": cert_ok,
                        "202": _json(
                            _ref("RequestOut"),
                            "kept for approval (the profile needs dual control)",
                            Location="the pending request",
                        ),
                        "400": _problem("malformed body, bad CSR or key, unknown profile"),
                        "406": _problem("no acceptable representation"),
                        "413": _problem("body over the configured limit"),
                        "415": _problem("the body is not application/json"),
                        **_COMMON,
                    },
                },
                "get": {
                    "operationId": "listCertificates",
                    "summary": "Inventory: certificates matching the filters, oldest first",
                    "parameters": [
                        _query(
                            "status",
                            "issued or revoked",
                            {"type": "string", "enum": ["issued", "revoked"]},
                        ),
                        _query("profile", "profile name"),
                        _query("issuer", "issuing CA name"),
                        _query("name", "substring of any SAN or the subject (case-insensitive)"),
                        _query("name_exact", "one SAN value exactly"),
                        _query("owner", "metadata.owner given at enrollment"),
                        _query("requester", "the client that requested it"),
                        _query(
                            "expiring_within",
                            "not yet expired and expiring within this span: 14d, 12h, 30m",
                            {"type": "string", "pattern": "^[1-9][0-9]{0,5}[dhm]$"},
                        ),
                        _query(
                            "limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000}
                        ),
                        _query(
                            "cursor",
                            "next_cursor of the previous page",
                            {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        ),
                    ],
                    "responses": {
                        "200": _json(
                            _ref("CertificatePage"),
                            "one page",
                            Link='rel="next" when there is more',
                        ),
                        "400": _problem("bad filter or cursor"),
                        **_COMMON,
                    },
                },
            },
            "/certificates/{serial}": {
                "get": {
                    "operationId": "getCertificate",
                    "summary": "One certificate: JSON, PEM (chain) or DER by Accept",
                    "parameters": [serial_param],
                    "responses": {
                        "200": {
                            "description": "the certificate",
                            "content": {
                                "application/json": {"schema": _ref("CertificateOut")},
                                "application/pem-certificate-chain": {"schema": {"type": "string"}},
                                "application/x-pem-file": {"schema": {"type": "string"}},
                                "application/pkix-cert": {
                                    "schema": {"type": "string", "contentEncoding": "binary"}
                                },
                            },
                        },
                        "404": _problem("no such certificate"),
                        "406": _problem("no acceptable representation"),
                        **_COMMON,
                    },
                }
            },
            "/certificates/{serial}/revoke": {
                "post": {
                    "operationId": "revokeCertificate",
                    "summary": "Revoke a certificate (its requester, or the revoke role)",
                    "description": (
                        "Records the time and RFC 5280 reason (audited). The certificate's OCSP "
                        "response is refreshed at once; its CRL follows within [crl] "
                        "revocation_delay_seconds. CA certificates are revoked with "
                        "'hsmca ca revoke' (a root operation)."
                    ),
                    "parameters": [serial_param],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("RevokeIn")}},
                    },
                    "responses": {
                        "200": _json(_ref("CertificateOut"), "the revoked certificate"),
                        "400": _problem("malformed body or a reason not accepted"),
                        "404": _problem("no such certificate (or not one this client may see)"),
                        "409": _problem("already revoked, or the certificate of a CA"),
                        "413": _problem("body over the configured limit"),
                        "415": _problem("the body is not application/json"),
                        **_COMMON,
                    },
                }
            },
            "/profiles": {
                "get": {
                    "operationId": "listProfiles",
                    "summary": "The issuance profiles this client may use",
                    "responses": {"200": _json(_list_of("ProfileOut"), "profiles"), **_COMMON},
                }
            },
            "/cas": {
                "get": {
                    "operationId": "listCas",
                    "summary": "The CAs of the hierarchy",
                    "responses": {"200": _json(_list_of("CaOut"), "CAs"), **_COMMON},
                }
            },
            "/requests": {
                "get": {
                    "operationId": "listRequests",
                    "summary": "Requests kept for approval (approvers see all, requesters their own)",
                    "parameters": [
                        _query(
                            "state",
                            "default pending",
                            {
                                "type": "string",
                                "enum": ["pending", "approved", "issued", "rejected", "expired"],
                            },
                        ),
                        _query(
                            "limit",
                            "at most this many",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                        ),
                    ],
                    "responses": {
                        "200": _json(_list_of("RequestOut"), "requests, oldest first"),
                        "400": _problem("bad filter"),
                        **_COMMON,
                    },
                }
            },
            "/requests/{request_id}": {
                "get": {
                    "operationId": "getRequest",
                    "summary": "A request kept for approval",
                    "parameters": [request_param],
                    "responses": {
                        "200": _json(_ref("RequestOut"), "the request"),
                        "404": _problem("no such request"),
                        **_COMMON,
                    },
                }
            },
            "/requests/{request_id}/approve": {
                "post": {
                    "operationId": "approveRequest",
                    "summary": "Approve (dual control: not the requester) and issue",
                    "parameters": [request_param],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("ApproveIn")}},
                    },
                    "responses": {
                        "201": cert_ok,
                        "400": _problem("malformed body"),
                        "404": _problem("no such request"),
                        "406": _problem("no acceptable representation"),
                        "409": _problem("not pending (decided or expired)"),
                        "413": _problem("body over the configured limit"),
                        "415": _problem("the body is not application/json"),
                        **_COMMON,
                    },
                }
            },
            "/requests/{request_id}/reject": {
                "post": {
                    "operationId": "rejectRequest",
                    "summary": "Reject (approver) or withdraw (requester) a pending request",
                    "parameters": [request_param],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("RejectIn")}},
                    },
                    "responses": {
                        "200": _json(_ref("RequestOut"), "the rejected request"),
                        "400": _problem("malformed body"),
                        "404": _problem("no such request"),
                        "409": _problem("not pending (decided or expired)"),
                        "413": _problem("body over the configured limit"),
                        "415": _problem("the body is not application/json"),
                        **_COMMON,
                    },
                }
            },
            "/audit/events": {
                "get": {
                    "operationId": "listAuditEvents",
                    "summary": "Audit events, oldest first, filtered (the audit role)",
                    "description": (
                        "Events exactly as chained, each with its hash and previous hash. Page "
                        "with after=next_after until next_after is null; a consumer that "
                        "follows the log keeps its last seq and asks for after=it."
                    ),
                    "parameters": [
                        _query("since", "events at or after this RFC 3339 time"),
                        _query("until", "events before this RFC 3339 time"),
                        _query("actor", "exactly this actor"),
                        _query("action", "exactly this action; a trailing * makes it a prefix"),
                        _query("subject", "subject contains this text"),
                        _query(
                            "after",
                            "only events with a greater seq (the previous page's next_after)",
                            {"type": "integer", "minimum": 0},
                        ),
                        _query(
                            "limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000}
                        ),
                    ],
                    "responses": {
                        "200": _json(
                            _ref("AuditEventPage"),
                            "one page",
                            Link='rel="next" when there is more',
                        ),
                        "400": _problem("bad filter, time or cursor"),
                        **_COMMON,
                    },
                }
            },
            "/audit/verify": {
                "get": {
                    "operationId": "verifyAudit",
                    "summary": "Verify the live audit chain (the audit role)",
                    "description": (
                        "Walks every event, checks every checkpoint signature against the audit "
                        "certificates and, when configured, the witness file, as hsmca audit "
                        "verify does. 200 with ok=false and first_bad_seq when the chain is "
                        "broken. Takes seconds per million events."
                    ),
                    "responses": {
                        "200": _json(_ref("AuditVerifyOut"), "the outcome"),
                        "400": _problem("a query parameter (there are none)"),
                        **_COMMON,
                    },
                }
            },
            "/audit/export": {
                "get": {
                    "operationId": "exportAudit",
                    "summary": "The audit log as a bundle that verifies offline (the audit role)",
                    "description": (
                        "A zip of events.jsonl, checkpoints.jsonl, chain.pem and manifest.json "
                        "(docs/audit-verification.md), streamed. from/to: a seq or an RFC 3339 "
                        "time, inclusive; default the whole chain up to its head. Audited "
                        "(audit.exported)."
                    ),
                    "parameters": [
                        _query("from", "first event: a seq, or the first event at or after a time"),
                        _query("to", "last event: a seq, or the last event at or before a time"),
                    ],
                    "responses": {
                        "200": {
                            "description": "the bundle",
                            "headers": {
                                "Content-Disposition": {
                                    "schema": {"type": "string"},
                                    "description": "attachment; filename=hsmca-audit-FIRST-LAST.zip",
                                }
                            },
                            "content": {
                                "application/zip": {
                                    "schema": {"type": "string", "contentEncoding": "binary"}
                                }
                            },
                        },
                        "400": _problem("a bound that is neither a seq nor a time, or no events"),
                        **_COMMON,
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
