"""The pure parts of backups: value coding, the manifest, password redaction, CRL number skip."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import BigInteger, Boolean, Integer, LargeBinary, String, Text

from ca.store import tables as t
from ca.store.backup import (
    CONFIG_MEMBER,
    BackupError,
    Manifest,
    TableColumn,
    TableEntry,
    column_kind,
    crl_number_skip,
    decode_value,
    encode_value,
    parse_manifest,
    parse_row,
    redact_database_password,
    row_line,
)

COLUMNS = (
    TableColumn("id", "int"),
    TableColumn("name", "str"),
    TableColumn("flag", "bool"),
    TableColumn("der", "bytes"),
    TableColumn("at", "datetime"),
    TableColumn("gone", "datetime"),
)


@pytest.mark.parametrize(
    ("column_type", "kind"),
    [
        (t.UtcDateTime(), "datetime"),
        (LargeBinary(), "bytes"),
        (Boolean(), "bool"),
        (Integer(), "int"),
        (BigInteger(), "int"),
        (String(64), "str"),
        (Text(), "str"),
    ],
)
def test_every_column_type_of_the_schema_has_a_kind(column_type, kind):
    assert column_kind(column_type) == kind


def test_every_column_of_the_schema_is_encodable():
    for table in t.Base.metadata.sorted_tables:
        for column in table.columns:
            column_kind(column.type)


def test_a_row_round_trips_exactly_with_bytes_times_and_unicode():
    moment = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)
    row = (2**62 + 7, 'Zürich ☃ "quoted"\n', False, b"\x00\xff\x30\x82", moment, None)
    line = row_line([c.kind for c in COLUMNS], row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = parse_row(line, COLUMNS)
    assert back == {
        "id": 2**62 + 7,
        "name": 'Zürich ☃ "quoted"\n',
        "flag": False,
        "der": b"\x00\xff\x30\x82",
        "at": moment.replace(tzinfo=None),  # naive UTC, as the columns store it
        "gone": None,
    }


def test_a_time_in_another_zone_is_written_as_utc():
    cet = datetime(2026, 1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert encode_value("datetime", cet) == "2026-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("bytes", "not base64!"),
        ("bytes", 5),
        ("datetime", "2026-01-01T00:00:00"),  # no zone
        ("datetime", "yesterday Z"),
        ("bool", 1),
        ("int", True),
        ("int", "5"),
        ("str", 5),
    ],
)
def test_a_value_that_does_not_fit_its_kind_is_refused(kind, value):
    with pytest.raises(ValueError):
        decode_value(kind, value)


def test_a_row_with_the_wrong_number_of_values_is_refused():
    with pytest.raises(ValueError):
        parse_row(b"[1, 2]\n", COLUMNS)


def _manifest() -> Manifest:
    entry = TableEntry("crls", "tables/00-crls.jsonl", (TableColumn("id", "int"),), 3, "a" * 64)
    return Manifest(
        hsmca_version="0.1.0",
        alembic_revision="0008",
        dialect="sqlite",
        created="2026-12-04T21:00:00.000000Z",
        tables=(entry,),
        members={CONFIG_MEMBER: "b" * 64, entry.member: entry.sha256},
        audit_head=(12, "c" * 64),
    )


def test_a_manifest_round_trips():
    m = _manifest()
    assert parse_manifest(m.to_json()) == m


def _edited(**changes: object) -> bytes:
    doc = json.loads(_manifest().to_json())
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        pytest.param(b"{not json", "not valid JSON", id="fail/not-json"),
        pytest.param(b"[]", "not an hsmca backup", id="fail/not-an-object"),
        pytest.param(_edited(format="zip"), "not an hsmca backup", id="fail/other-format"),
        pytest.param(_edited(format_version=2), "version 2", id="fail/newer-format"),
        pytest.param(_edited(created="yesterday"), "RFC 3339", id="fail/bad-time"),
        pytest.param(_edited(alembic_revision=None), "alembic_revision", id="fail/no-revision"),
        pytest.param(
            _edited(members={CONFIG_MEMBER: "b" * 64, "tables/00-crls.jsonl": "d" * 64}),
            "digest differs",
            id="fail/table-digest-differs",
        ),
        pytest.param(
            _edited(
                members={
                    CONFIG_MEMBER: "b" * 64,
                    "tables/00-crls.jsonl": "a" * 64,
                    "../etc/passwd": "e" * 64,
                }
            ),
            "members",
            id="fail/extra-member",
        ),
    ],
)
def test_a_bad_manifest_is_refused_saying_why(data, says):
    with pytest.raises(BackupError, match=says):
        parse_manifest(data)


def test_a_table_member_outside_tables_is_refused():
    doc = json.loads(_manifest().to_json())
    doc["tables"][0]["member"] = "../../x.jsonl"
    doc["members"] = {CONFIG_MEMBER: "b" * 64, "../../x.jsonl": "a" * 64}
    with pytest.raises(BackupError, match="bad member name"):
        parse_manifest(json.dumps(doc).encode())


def test_the_database_password_is_removed_from_the_config():
    text = '[database]\nurl = "postgresql+psycopg://hsmca:s3cret@db/hsmca"\n\n[ca]\norganization = "x"\n'
    redacted, notes = redact_database_password(text)
    assert "s3cret" not in redacted
    assert 'url = "postgresql+psycopg://hsmca@db/hsmca"' in redacted
    assert 'organization = "x"' in redacted and notes


def test_a_config_without_a_password_is_kept_byte_for_byte():
    text = '# mine\n[database]\nurl = "postgresql+psycopg://hsmca@db/hsmca"\n'
    assert redact_database_password(text) == (text, ())
    assert redact_database_password("") == ("", ())


def test_the_crl_number_skip_covers_the_scheduler_pace_since_the_backup():
    created = datetime(2026, 12, 4, tzinfo=UTC)
    assert crl_number_skip(created, created) == 100
    assert crl_number_skip(created, created + timedelta(days=1)) == 86400 // 5 + 100
    assert crl_number_skip(created, created - timedelta(hours=1)) == 100  # a clock behind


def test_progress_lines_go_to_stderr_for_large_databases_only(capsys, monkeypatch):
    from hsmca import cli_backup

    small = cli_backup.row_progress("backing up")
    small(10, 100)
    small(100, 100)
    assert capsys.readouterr().err == ""

    clock = iter([0.0, 0.5, 1.5, 1.6, 1.7])
    monkeypatch.setattr(cli_backup.time, "monotonic", lambda: next(clock))
    show = cli_backup.row_progress("restoring")
    total = cli_backup.PROGRESS_FROM * 2
    for done in (2000, 4000, 6000, total, total):
        show(done, total)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"restoring: 2000/{total} rows (5%)",  # the first at once
        f"restoring: 6000/{total} rows (15%)",  # then at most once a second
        f"restoring: {total}/{total} rows (100%)",  # and the end, once
    ]
