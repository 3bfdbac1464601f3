"""Loading a CRM export: every row checked before anything is published, errors by line with the reason."""
from __future__ import annotations

import json

import pytest

from streams.codec import SchemaStore, SingleObjectCodec
from streams.data import load
from streams.settings import REPO_ROOT

NOW = 1_796_000_000_000


def _check(path, fmt=None):
    return load.check(path, load.file_format(path, fmt), NOW)


def _rows(path, fmt=None):
    return list(load.rows(path, load.file_format(path, fmt), NOW))


def test_a_csv_export_becomes_profiles_with_attributes_lists_and_times(tmp_path):
    # Given a CSV export with attribute columns, a ';' list, an ISO time and a deletion
    path = tmp_path / "crm.csv"
    path.write_text("customer_id,updated_ts,display_name,clv,preferred_channel,marketing_consent,timezone,"
                    "channels_opted_out,attributes.tier,_delete\n"
                    "c1,2026-11-01T10:00:00Z,Ann,1200.5,email,yes,Europe/Amsterdam,sms;chat,gold,\n"
                    "c2,,,,,,,,,true\n")
    # When it is read
    rows = _rows(path)
    # Then the first row is a whole profile, the second a tombstone
    assert [r.customer_id for r in rows] == ["c1", "c2"] and rows[1].profile is None
    p = rows[0].profile
    assert p["updated_ts"] == 1_793_527_200_000 and p["clv"] == 1200.5 and p["marketing_consent"] is True
    assert p["channels_opted_out"] == ["sms", "chat"] and p["attributes"] == {"tier": "gold"}
    assert p["timezone"] == "Europe/Amsterdam" and p["segment"] == "standard" and p["opted_out"] is False
    # And it encodes as a CustomerProfile
    SingleObjectCodec(SchemaStore(REPO_ROOT / "schemas")).encode("t", "CustomerProfile", p)


def test_json_lines_take_the_schema_field_names_and_a_missing_time_is_now(tmp_path):
    path = tmp_path / "crm.jsonl"
    path.write_text(json.dumps({"customer_id": "c1", "clv": 10, "attributes": {"plan": "fibre"}}) + "\n\n"
                    + json.dumps({"customer_id": "c2", "_delete": True}) + "\n")
    rows = _rows(path)
    assert rows[0].profile["updated_ts"] == NOW and rows[0].profile["attributes"] == {"plan": "fibre"}
    assert rows[1].profile is None and [r.line for r in rows] == [1, 3]


def test_bad_rows_are_reported_by_line_with_the_reason_and_the_good_ones_counted(tmp_path):
    # Given a file with a bad row of every kind between good ones
    path = tmp_path / "crm.jsonl"
    lines = [
        {"customer_id": "ok1"},
        {"customer_id": ""},
        {"customer_id": "c3", "clv": -5},
        {"customer_id": "c4", "clv": "lots"},
        {"customer_id": "c5", "timezone": "Mars/Olympus"},
        {"customer_id": "c6", "preferred_channel": "pigeon"},
        {"customer_id": "c7", "updated_ts": "2026-11-01 10:00"},
        {"customer_id": "c8", "colour": "red"},
        {"customer_id": "c9", "marketing_consent": "perhaps"},
        {"customer_id": "c10", "attributes": {f"a{i}": "x" for i in range(load.MAX_ATTRIBUTES + 1)}},
        {"customer_id": "ok2", "clv": 3},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n[1, 2]\n")
    # When it is checked
    found = _check(path)
    # Then each bad line is named with its reason, and the good rows are counted
    reasons = dict(found.errors)
    assert found.rows == 2 and found.error_count == 11 and sorted(reasons) == [*range(2, 11), 12, 13]
    assert "customer_id is empty" in reasons[2]
    assert "at least 0" in reasons[3] and "must be a number" in reasons[4]
    assert "IANA" in reasons[5] and "not a channel" in reasons[6] and "no time zone" in reasons[7]
    assert "unknown field(s) 'colour'" in reasons[8] and "true or false" in reasons[9]
    assert "attributes; at most" in reasons[10] and "not JSON" in reasons[12] and "JSON object" in reasons[13]


def test_a_csv_header_with_an_unknown_column_is_refused_before_any_row(tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text("customer_id,clv,colour\nc1,1,red\n")
    found = _check(path)
    assert found.rows == 0 and found.errors == [(1, found.errors[0][1])] and "'colour'" in found.errors[0][1]


def test_a_csv_row_with_the_wrong_number_of_values_is_named(tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text('customer_id,clv\nc1,1\nc2,"2",3\n"c3","3"\n')
    found = _check(path)
    assert found.rows == 2 and found.errors == [(3, "3 values for 2 columns")]


def test_a_line_beyond_the_bound_is_refused_without_reading_it_whole_and_the_next_is_read(tmp_path):
    path = tmp_path / "crm.jsonl"
    huge = json.dumps({"customer_id": "big", "display_name": "x" * (load.MAX_LINE_BYTES * 3)})
    path.write_text(huge + "\n" + json.dumps({"customer_id": "after"}) + "\n")
    found = _check(path)
    assert found.rows == 1 and found.errors[0][0] == 1 and "longer than 64 KiB" in found.errors[0][1]


def test_control_characters_and_over_long_ids_are_refused(tmp_path):
    path = tmp_path / "crm.jsonl"
    path.write_text(json.dumps({"customer_id": "c\x1b[31m"}) + "\n" + json.dumps({"customer_id": "c" * 300}) + "\n")
    found = _check(path)
    assert [line for line, _ in found.errors] == [1, 2]
    assert "control character" in found.errors[0][1] and "longer than 256" in found.errors[1][1]


def test_repeated_customers_are_counted_and_the_format_comes_from_the_name(tmp_path):
    path = tmp_path / "crm.ndjson"
    path.write_text("\n".join(json.dumps({"customer_id": c}) for c in ("a", "b", "a")) + "\n")
    assert _check(path).duplicates == 1
    with pytest.raises(load.RowError, match="--format"):
        load.file_format(tmp_path / "crm.txt", None)


def test_hostile_values_are_reported_by_line_not_raised(tmp_path):
    # Given numbers a float cannot hold, digits that are not ASCII, and JSON nested far too deeply
    path = tmp_path / "crm.jsonl"
    path.write_text('{"customer_id": "a", "updated_ts": NaN}\n'
                    '{"customer_id": "b", "updated_ts": 1e400}\n'
                    '{"customer_id": "c", "updated_ts": "\u00b2"}\n'
                    + "[" * 60000 + "\n"
                    + '{"customer_id": "ok"}\n')
    # Then each is a line with a reason, and the good row is counted
    found = _check(path)
    assert found.rows == 1 and [line for line, _ in found.errors] == [1, 2, 3, 4]


def test_a_quoted_csv_field_that_spans_lines_is_refused_not_split_into_rows(tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text('customer_id,display_name\nc1,"Ann\nc2,Bob"\nc3,"Say ""hi"""\n')
    found = _check(path)
    assert [line for line, _ in found.errors] == [2, 3] and "unbalanced quote" in found.errors[0][1] and found.rows == 1
