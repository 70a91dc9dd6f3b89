"""Dates in free text: found in every format, shifted with the row's entity (issue #21)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest

from biomask.errors import PolicyError
from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.text.dates import find_dates
from biomask.policies import parse_policy


def _found(text: str, order: str = "DMY") -> list[tuple[str, dt.date]]:
    return [(text[d.start : d.end], d.date) for d in find_dates(text, order)]


FEB24 = dt.date(1988, 2, 24)


@pytest.mark.parametrize(
    "written",
    [
        "1988-02-24",
        "1988/02/24",
        "24/02/1988",
        "24.02.1988",
        "24-02-1988",
        "24 Feb 1988",
        "24 Feb. 1988",
        "24th February 1988",
        "24-FEB-1988",
        "February 24, 1988",
        "Feb 24th 1988",
        "1988-02-24T10:15",
        "1988-02-24 10:15:30Z",
        "24/02/1988 10:15",
    ],
)
def test_every_format_is_found(written: str) -> None:
    assert _found(f"DOB {written}; seen.") == [(written, FEB24)]


@pytest.mark.parametrize(
    ("written", "days", "expected"),
    [
        ("1988-02-24", 5, "1988-02-29"),  # into a leap day
        ("29/02/2024", 1, "01/03/2024"),  # out of one
        ("29 February", 365, "28 February"),  # no year: a leap reference year
        ("31 Dec 1999", 1, "1 Jan 2000"),  # across a year boundary, short month kept
        ("January 3, 2000", -5, "December 29, 1999"),
        ("2023-12-31T23:59", 1, "2024-01-01T23:59"),
        ("05.01.99", -10, "26.12.98"),  # two-digit year, zero padding kept
        ("5 July", 3, "8 July"),
        ("Feb 24th 1988", 8, "Mar 3rd 1988"),
        ("24-FEB-1988", 30, "25-MAR-1988"),
    ],
)
def test_shifted_in_its_own_format(written: str, days: int, expected: str) -> None:
    (d,) = find_dates(f"on {written}.")
    assert d.shifted(days) == expected


def test_date_order_reads_ambiguous_dates_and_falls_back_when_only_one_is_valid() -> None:
    assert _found("03/04/2020") == [("03/04/2020", dt.date(2020, 4, 3))]
    assert _found("03/04/2020", "MDY") == [("03/04/2020", dt.date(2020, 3, 4))]
    assert _found("02/24/1988") == [("02/24/1988", FEB24)]  # DMY impossible: read MDY
    assert _found("31/31/2020") == []
    with pytest.raises(ValueError, match="date_order must be one of DMY, MDY"):
        find_dates("x", "YMD")


def test_things_that_are_not_dates() -> None:
    text = (
        "Call +44 20 7946 0958 or 020 7946 0958; booth 12; 15:43; version 1.2.3; "
        "ref 2024-99-99; they may 5 times retry; SUBJ-1988-02-24X"
    )
    assert _found(text) == []


POLICY = """\
version: 1
dataset: d
entities:
  subject: {column: subject_id, max_days: 365}
columns:
  subject_id: {op: tokenize, domain: subject}
  date_of_birth: {op: date_shift, entity: subject}
  capture_ts: {op: date_shift, entity: subject}
  notes: {op: text%s}
"""


def _mask(extra: str, rows: dict[str, Any], policy: str = POLICY) -> Any:
    pol = parse_policy(policy % extra, source="policy.yaml")
    batch = pa.record_batch(
        [
            pa.array(rows["subject_id"], pa.string()),
            pa.array(rows["date_of_birth"], pa.date32()),
            pa.array(rows["capture_ts"], pa.timestamp("us")),
            pa.array(rows["notes"], pa.string()),
        ],
        names=["subject_id", "date_of_birth", "capture_ts", "notes"],
    )
    return Masker(pol, Keyring.ephemeral()).mask_batch(batch)


def test_note_dates_equal_the_masked_columns() -> None:
    dobs = [dt.date(1988, 2, 24), dt.date(1990, 12, 31), dt.date(2000, 2, 29)]
    seen = [
        dt.datetime(2024, 2, 29, 10, 15),
        dt.datetime(2023, 12, 31, 9, 0),
        dt.datetime(2024, 1, 1, 8, 5),
    ]
    notes = [
        f"Subject (DOB {dobs[0]:%Y-%m-%d}) captured {seen[0]:%Y-%m-%dT%H:%M}.",
        f"Born {dobs[1].day} {dobs[1]:%B %Y}, seen {seen[1]:%d/%m/%Y %H:%M}.",
        f"DOB {dobs[2]:%B} {dobs[2].day}, {dobs[2].year}; capture {seen[2]:%d %b %Y}.",
    ]
    res = _mask(
        "",
        {
            "subject_id": ["S-000001", "S-000002", "S-000003"],
            "date_of_birth": dobs,
            "capture_ts": seen,
            "notes": notes,
        },
    )
    out = res.output.to_pylist()
    assert res.stats["text:DATE"] == 6
    a, b, c = out
    assert a["notes"] == (
        f"Subject (DOB {a['date_of_birth']:%Y-%m-%d}) captured {a['capture_ts']:%Y-%m-%dT%H:%M}."
    )
    assert b["notes"] == (
        f"Born {b['date_of_birth'].day} {b['date_of_birth']:%B %Y}, seen "
        f"{b['capture_ts']:%d/%m/%Y %H:%M}."
    )
    d = c["date_of_birth"]
    assert c["notes"] == f"DOB {d:%B} {d.day}, {d.year}; capture {c['capture_ts']:%d %b %Y}."
    # and they moved: the masked dates are not the real ones
    assert all(x != r["date_of_birth"] for x, r in zip(dobs, out, strict=True))


def test_rows_without_an_entity_redact_keep_or_shift_by() -> None:
    rows = {
        "subject_id": [None],
        "date_of_birth": [None],
        "capture_ts": [None],
        "notes": ["Seen on 24/02/1988."],
    }
    assert _mask("", rows).output.column("notes").to_pylist() == ["Seen on <DATE>."]
    assert _mask(", unlinked: redact", rows).output.column("notes").to_pylist() == ["Seen on ***."]
    assert _mask(", dates: keep", rows).output.column("notes").to_pylist() == [
        "Seen on 24/02/1988."
    ]
    policy = POLICY.replace("  notes:", "  offset: {op: drop}\n  notes:")
    pol = parse_policy(policy % ", shift_by: offset", source="policy.yaml")
    batch = pa.record_batch(
        [
            pa.array([None], pa.string()),
            pa.array([None], pa.date32()),
            pa.array([None], pa.timestamp("us")),
            pa.array([-3], pa.int32()),
            pa.array(["Seen on 24/02/1988 and 1 March 1988."]),
        ],
        names=["subject_id", "date_of_birth", "capture_ts", "offset", "notes"],
    )
    out = Masker(pol, Keyring.ephemeral()).mask_batch(batch).output
    assert out.column("notes").to_pylist() == ["Seen on 21/02/1988 and 27 February 1988."]


def test_shift_by_must_name_a_column_of_the_table() -> None:
    with pytest.raises(PolicyError) as err:
        Masker(
            parse_policy(POLICY % ", shift_by: offset", source="policy.yaml"), Keyring.ephemeral()
        )
    assert str(err.value) == (
        "policy.yaml:9: columns.notes.shift_by: shift_by names column 'offset', which table "
        "'d' does not list (it must be an integer column of days in the same table)"
    )


def test_text_rule_entity_must_be_declared() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(POLICY % ", entity: visit", source="policy.yaml")
    assert str(err.value) == (
        "policy.yaml:9: columns.notes.entity: unknown entity 'visit' (entities: subject)"
    )


def test_a_cell_over_max_text_bytes_is_quarantined_with_its_reason() -> None:
    rows = {
        "subject_id": ["S-000001", "S-000002"],
        "date_of_birth": [None, None],
        "capture_ts": [None, None],
        "notes": ["short note", "x" * 2000],
    }
    res = _mask(", max_text_bytes: 1000", rows)
    assert res.output.column("notes").to_pylist() == ["short note"]
    assert res.quarantine is not None
    assert res.quarantine.column("_biomask_reason").to_pylist() == [
        "notes: text cell larger than max_text_bytes (1,000 bytes); not masked"
    ]
    assert res.quarantine.column("notes").to_pylist() == [None] or "xxx" not in str(
        res.quarantine.column("notes").to_pylist()
    )
