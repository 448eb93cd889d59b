"""Expiry notices, the pure part (ca.notices): windows, renewals, grouping, destinations, what is
sent and how it is signed; and the [notices] configuration section."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.config import AppConfig, NoticesConfig, load_config, render_toml
from ca.errors import ConfigError
from ca.notices import (
    MAX_RETRY_DELAY,
    Destinations,
    ExpiringCertificate,
    ExpiryWindow,
    Notice,
    PriorNotice,
    build_email,
    build_payload,
    destinations_for,
    drop_renewed,
    group_by_owner,
    is_due,
    is_renewed,
    plan_notices,
    retry_delay,
    sign_payload,
    verify_signature,
    window_for,
    windows_from,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
WINDOWS = windows_from([30, 14, 7, 1])


def cert(
    serial: str,
    days_left: float,
    owner: str = "team-a",
    names: tuple[str, ...] = ("dns:a.corp.test",),
    revoked: bool = False,
) -> ExpiringCertificate:
    return ExpiringCertificate(
        serial=serial,
        owner=owner,
        requester=owner,
        subject=f"CN={names[0].partition(':')[2] if names else serial}",
        names=names,
        not_before=NOW - timedelta(days=60),
        not_after=NOW + timedelta(days=days_left),
        profile="server",
        issuer="issuing",
        fingerprint_sha256="ab" * 32,
        revoked=revoked,
    )


def config(**values: object) -> NoticesConfig:
    return NoticesConfig.model_validate({"enabled": True, **values})


HOOK = {"webhook_url": "https://hooks.corp.test/x", "webhook_secret_file": "secret"}


@pytest.mark.parametrize(
    ("days_left", "expected"),
    [
        pytest.param(45, None, id="ok/not-yet-in-a-window"),
        pytest.param(30, 30, id="ok/exactly-30-days-is-the-30-day-window"),
        pytest.param(29.9, 30, id="ok/inside-30"),
        pytest.param(10, 14, id="ok/the-smallest-window-reached"),
        pytest.param(7, 7, id="ok/exactly-7"),
        pytest.param(0.5, 1, id="ok/last-day"),
        pytest.param(0, None, id="fail/expiring-now"),
        pytest.param(-1, None, id="fail/expired"),
    ],
)
def test_a_certificate_falls_in_the_smallest_window_its_remaining_time_reached(
    days_left: float, expected: int | None
) -> None:
    window = window_for(NOW + timedelta(days=days_left), NOW, WINDOWS)
    assert (window.days if window else None) == expected


def test_windows_are_distinct_and_largest_first() -> None:
    assert windows_from([1, 30, 7, 7]) == (ExpiryWindow(30), ExpiryWindow(7), ExpiryWindow(1))


@pytest.mark.parametrize(
    ("newer", "renewed"),
    [
        pytest.param(cert("2", 80), True, id="ok/same-names-same-owner-longer"),
        pytest.param(
            cert("2", 80, names=("dns:a.corp.test", "dns:b.corp.test")),
            True,
            id="ok/a-superset-of-the-names",
        ),
        pytest.param(cert("2", 80, revoked=True), False, id="fail/the-newer-one-is-revoked"),
        pytest.param(cert("2", 80, owner="team-b"), False, id="fail/another-owner"),
        pytest.param(cert("2", 80, names=("dns:b.corp.test",)), False, id="fail/other-names"),
        pytest.param(cert("2", 5), False, id="fail/expires-sooner"),
    ],
)
def test_a_certificate_is_renewed_by_a_newer_unrevoked_one_of_its_owner_covering_its_names(
    newer: ExpiringCertificate, renewed: bool
) -> None:
    old = cert("1", 10)
    assert drop_renewed([old], [old, newer]) == ([] if renewed else [old])


def test_a_certificate_without_sans_is_renewed_by_one_with_the_same_subject() -> None:
    old = replace(cert("1", 10, names=()), subject="CN=svc")
    assert drop_renewed([old], [replace(cert("2", 90, names=()), subject="CN=svc")]) == []
    assert drop_renewed([old], [replace(cert("3", 90, names=()), subject="CN=other")]) == [old]


def test_the_indexed_renewal_check_agrees_with_the_plain_one_on_random_inventories() -> None:
    rng = random.Random(7)
    pool = [f"dns:n{i}.corp.test" for i in range(6)]
    for _ in range(200):
        certs = [
            cert(
                f"s{i}",
                rng.uniform(-2, 90),
                owner=rng.choice(["team-a", "team-b"]),
                names=tuple(rng.sample(pool, rng.randint(0, 3))),
                revoked=rng.random() < 0.2,
            )
            for i in range(12)
        ]
        plain = [c for c in certs if not is_renewed(c, certs)]
        assert drop_renewed(certs, certs) == plain


def test_grouping_collects_each_owners_certificates_per_window_soonest_first() -> None:
    a1, a2, a3, b1 = cert("a1", 12), cert("a2", 9), cert("a3", 3), cert("b1", 9, owner="team-b")
    groups = group_by_owner(
        [
            (a1, ExpiryWindow(14)),
            (a2, ExpiryWindow(14)),
            (a3, ExpiryWindow(7)),
            (b1, ExpiryWindow(14)),
        ]
    )
    assert groups == {
        ("team-a", ExpiryWindow(14)): (a2, a1),
        ("team-a", ExpiryWindow(7)): (a3,),
        ("team-b", ExpiryWindow(14)): (b1,),
    }


def test_an_owner_entry_replaces_the_default_destinations() -> None:
    cfg = config(
        **HOOK,
        smtp_host="smtp.corp.test",
        smtp_from="pki@corp.test",
        default_recipients=["pki@corp.test"],
        owners={
            "team-a": {"email": ["a@corp.test"], "webhook_url": "https://a.corp.test/hook"},
            "team-b": {"email": ["b@corp.test"]},
        },
    )
    assert destinations_for("team-a", cfg) == Destinations(
        "https://a.corp.test/hook", "secret", ("a@corp.test",)
    )
    assert destinations_for("team-b", cfg) == Destinations(
        "https://hooks.corp.test/x", "secret", ("b@corp.test",)
    )
    assert destinations_for("other", cfg).emails == ("pki@corp.test",)
    # An unbound ACME account's own mailto: contacts come before the catch-all recipients.
    assert destinations_for("acme:7", cfg, ["ops@corp.test"]).emails == ("ops@corp.test",)
    assert destinations_for(
        "acme:7", cfg.model_copy(update={"acme_contacts": False}), ["x@y.z"]
    ).emails == ("pki@corp.test",)


def test_without_an_smtp_server_there_is_no_email_channel() -> None:
    cfg = config(**HOOK)
    assert destinations_for("acme:7", cfg, ["ops@corp.test"]).channels() == ("webhook",)
    assert destinations_for("x", config()).channels() == ("none",)


def test_the_plan_skips_sent_waiting_revoked_expired_and_renewed_certificates() -> None:
    cfg = config(**HOOK)
    fresh, sent, waiting, retry = cert("f", 10), cert("s", 10), cert("w", 10), cert("r", 10)
    revoked = cert("x", 10, revoked=True, names=("dns:x.corp.test",))
    expired = cert("e", -1, names=("dns:e.corp.test",))
    renewed = cert("n", 10, names=("dns:n.corp.test",))
    renewal = cert("n2", 85, names=("dns:n.corp.test",))
    prior = {
        ("s", 14, "webhook"): PriorNotice("sent"),
        ("w", 14, "webhook"): PriorNotice("failed", 1, NOW + timedelta(minutes=5)),
        ("r", 14, "webhook"): PriorNotice("failed", 2, NOW - timedelta(minutes=5)),
        ("f", 30, "webhook"): PriorNotice("sent"),  # an earlier window says nothing of this one
    }
    candidates = [fresh, sent, waiting, retry, revoked, expired, renewed]
    notices = plan_notices(candidates, [*candidates, renewal], cfg, prior, NOW)
    assert [(n.owner, n.window.days, n.channel, n.serials) for n in notices] == [
        ("team-a", 14, "webhook", ["f", "r"])
    ]


def test_one_notice_per_owner_window_and_channel() -> None:
    cfg = config(
        **HOOK,
        smtp_host="smtp.corp.test",
        smtp_from="pki@corp.test",
        default_recipients=["pki@corp.test"],
    )
    certs = [cert("a", 10), cert("b", 3, names=("dns:b.corp.test",)), cert("c", 10, owner="team-b")]
    notices = plan_notices(certs, certs, cfg, {}, NOW)
    assert sorted((n.owner, n.window.days, n.channel, tuple(n.serials)) for n in notices) == [
        ("team-a", 7, "email", ("b",)),
        ("team-a", 7, "webhook", ("b",)),
        ("team-a", 14, "email", ("a",)),
        ("team-a", 14, "webhook", ("a",)),
        ("team-b", 14, "email", ("c",)),
        ("team-b", 14, "webhook", ("c",)),
    ]


def test_is_due_only_when_never_recorded_or_failed_and_waited() -> None:
    assert is_due(None, NOW)
    assert not is_due(PriorNotice("sent"), NOW)
    assert not is_due(PriorNotice("failed", 1, NOW + timedelta(seconds=1)), NOW)
    assert is_due(PriorNotice("failed", 1, NOW), NOW)


def test_retries_wait_longer_each_time_up_to_a_cap() -> None:
    base = timedelta(minutes=15)
    assert [retry_delay(n, base) for n in (1, 2, 3)] == [base, base * 2, base * 4]
    assert retry_delay(10, base) == MAX_RETRY_DELAY
    assert retry_delay(10_000, base) == MAX_RETRY_DELAY


def _notice() -> Notice:
    return Notice(
        "team-a",
        ExpiryWindow(14),
        "webhook",
        (cert("1f", 9.5), cert("2e", 12, names=("dns:b.corp.test", "ip:10.0.0.1"))),
        Destinations(emails=("a@corp.test", "b@corp.test")),
    )


def test_the_payload_is_canonical_json_listing_each_certificate() -> None:
    body = build_payload(_notice(), NOW)
    data = json.loads(body)
    assert body == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert data["type"] == "hsmca.expiry-notice" and data["version"] == 1
    assert data["owner"] == "team-a" and data["window_days"] == 14
    assert data["notice_id"] == _notice().notice_id
    assert [(c["serial"], c["days_left"]) for c in data["certificates"]] == [("1f", 9), ("2e", 12)]
    assert data["certificates"][1]["names"] == ["dns:b.corp.test", "ip:10.0.0.1"]
    assert data["certificates"][0]["not_after"] == "2026-12-14T00:00:00Z"


def test_the_notice_id_is_stable_and_depends_on_what_is_notified() -> None:
    notice = _notice()
    assert notice.notice_id == _notice().notice_id
    other = Notice(notice.owner, ExpiryWindow(7), notice.channel, notice.certificates)
    assert other.notice_id != notice.notice_id


def test_a_signature_verifies_over_the_exact_body_and_a_fresh_timestamp_only() -> None:
    body, secret = build_payload(_notice(), NOW), b"s3cret"
    ts = int(NOW.timestamp())
    signature = sign_payload(secret, ts, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(secret, body, signature, str(ts), NOW)
    assert not verify_signature(secret, body + b" ", signature, str(ts), NOW)  # body changed
    assert not verify_signature(b"other", body, signature, str(ts), NOW)  # wrong key
    assert not verify_signature(secret, body, signature, str(ts + 1), NOW)  # timestamp changed
    later = NOW + timedelta(minutes=6)
    assert not verify_signature(secret, body, signature, str(ts), later)  # a replay
    assert not verify_signature(secret, body, signature, "soon", NOW)


def test_the_mail_lists_the_certificates_for_all_recipients() -> None:
    message = build_email(_notice(), "pki@corp.test", NOW)
    assert message["To"] == "a@corp.test, b@corp.test"
    assert message["Subject"] == "[hsmca] 2 certificates of team-a expire within 14 days"
    assert message["X-Hsmca-Notice-Id"] == _notice().notice_id
    text = message.get_content()
    assert "serial      1f" in text and "b.corp.test, 10.0.0.1" in text
    assert "(in 9 days)" in text


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"windows_days": [7, 7]}, "listed twice", id="fail/duplicate-window"),
        pytest.param({"windows_days": [0]}, "1 to 3650", id="fail/zero-window"),
        pytest.param({"windows_days": []}, "at least 1", id="fail/no-window"),
        pytest.param({"webhook_url": "ftp://x"}, "http(s)", id="fail/not-http"),
        pytest.param(
            {"webhook_url": "https://x"}, "needs a webhook_secret_file", id="fail/unsigned-webhook"
        ),
        pytest.param(
            {"owners": {"a": {"webhook_url": "https://x"}}},
            "owners.a.webhook_url needs a webhook_secret_file",
            id="fail/unsigned-owner-webhook",
        ),
        pytest.param({"smtp_host": "smtp"}, "needs smtp_from", id="fail/no-sender"),
        pytest.param(
            {"default_recipients": ["a@corp.test"]},
            "smtp_host is empty",
            id="fail/mail-without-smtp",
        ),
        pytest.param(
            {"smtp_host": "s", "smtp_from": "a@b.c", "default_recipients": ["not-an-address"]},
            "not an e-mail address",
            id="fail/bad-address",
        ),
        pytest.param(
            {"owners": {"a": {"emails": ["x@y.z"]}}}, "unknown key", id="fail/unknown-key"
        ),
    ],
)
def test_bad_notices_settings_are_refused_naming_the_problem(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    lines = ["[notices]"]
    values = dict(values)
    owners = values.pop("owners", {})
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    for name, entry in owners.items():  # type: ignore[attr-defined]
        lines.append(f"[notices.owners.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    (tmp_path / "hsmca.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path, environ={})


def test_notices_settings_round_trip_through_the_rendered_toml(tmp_path: Path) -> None:
    cfg = AppConfig.model_validate(
        {
            "data_dir": tmp_path,
            "notices": {
                "enabled": True,
                "windows_days": [3, 21],
                **HOOK,
                "smtp_host": "smtp.corp.test",
                "smtp_from": "pki@corp.test",
                "owners": {"team a": {"email": ["a@corp.test"]}, "acme:3": {"email": ["o@x.y"]}},
            },
        }
    )
    (tmp_path / "hsmca.toml").write_text(render_toml(cfg))
    loaded = load_config(tmp_path, environ={})
    assert loaded.notices == cfg.notices
    assert loaded.notices.windows_days == [21, 3]


def test_notices_settings_take_environment_overrides_but_the_smtp_password_is_not_one(
    tmp_path: Path,
) -> None:
    cfg = load_config(
        tmp_path,
        environ={"HSMCA_NOTICES_ENABLED": "true", "HSMCA_NOTICES_SMTP_PASSWORD": "pw"},
    )
    assert cfg.notices.enabled
    assert "pw" not in render_toml(cfg)
