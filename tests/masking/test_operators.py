import datetime as dt
import re

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.operators.tokens import phone_parts
from biomask.policies import parse_policy

RING = Keyring.ephemeral()


def masker(columns: str, entities: str = "") -> Masker:
    text = f"version: 1\ndataset: t\n{entities}columns:\n{columns}"
    return Masker(parse_policy(text), RING)


def run(m: Masker, **cols: pa.Array | list[object]) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
    res = m.mask_batch(pa.RecordBatch.from_pydict(cols))
    return res.output, res.quarantine


EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.from_regex(
            r"[a-z]{5}[a-z0-9._+\-]{0,11}@[a-z][a-z0-9\-]{0,10}\.(com|org|example|co\.uk)",
            fullmatch=True,
        ),
        min_size=1,
        max_size=20,
    )
)
def test_email_stays_valid_and_consistent(values: list[str]) -> None:
    m = masker("  e: {op: email, domain: email}\n")
    out, q = run(m, e=values)
    assert q is None
    got = out.column("e").to_pylist()
    for v, t in zip(values, got, strict=True):
        assert EMAIL_RE.match(t), t
        assert t.split("@")[1] == v.split("@")[1]  # domain kept by default
        assert len(t) == len(v)
    again, _ = run(m, e=[v.upper() for v in values])
    assert [x.lower() for x in again.column("e").to_pylist()] == [x.lower() for x in got]


def test_email_domain_tokenized_keeps_tld() -> None:
    m = masker("  e: {op: email, domain: email, keep_domain: false}\n")
    out, _ = run(m, e=["isabel.petrosyan@clinic.example.org"])
    t = out.column("e")[0].as_py()
    assert t.endswith(".org") and "clinic" not in t and EMAIL_RE.match(t)


def test_email_domains_are_tokenized_once_each_and_consistently() -> None:
    """Each distinct domain is permuted once per batch: addresses sharing a domain share
    its token, in any batch; distinct domains stay distinct; a domain too short to permute
    quarantines only its own rows."""
    m = masker("  e: {op: email, domain: email, keep_domain: false}\n  k: {op: keep}\n")
    doms = ["clinic.example.org", "border-agency.gov", "mail.example.com"]
    emails = [f"person.number{i:03d}@{doms[i % 3]}" for i in range(300)] + ["someone@ab.io"]
    out, q = run(m, e=emails, k=list(range(len(emails))))
    got = out.column("e").to_pylist()
    by_dom: dict[str, set[str]] = {}
    for e, t in zip(emails, got, strict=False):
        by_dom.setdefault(e.split("@")[1], set()).add(t.split("@")[1])
    assert all(len(v) == 1 for v in by_dom.values()) and len({*map(min, by_dom.values())}) == 3
    assert len(set(got)) == len(got)
    assert q is not None and q.column("k").to_pylist() == [300]
    again, _ = run(m, e=emails[::-1][1:], k=list(range(300)))
    assert sorted(again.column("e").to_pylist()) == sorted(got)


def test_short_email_local_parts_never_merge() -> None:
    m = masker("  e: {op: email, domain: email}\n")
    values = [f"{a}{b}@clinic.example" for a in "abcdefghij" for b in "xyz"] + ["j@clinic.example"]
    out, q = run(m, e=values)
    assert q is None
    got = out.column("e").to_pylist()
    assert len(set(got)) == len(values)
    assert all(
        len(t) == len(v) and t.endswith("@clinic.example") for t, v in zip(got, values, strict=True)
    )


def test_email_local_part_without_letters_is_quarantined_with_the_reason() -> None:
    m = masker("  e: {op: email, domain: email}\n  k: {op: keep}\n")
    out, q = run(m, e=["._@clinic.example", "isabel@clinic.example"], k=[1, 2])
    assert out.num_rows == 1 and q is not None and q.column("k").to_pylist() == [1]
    assert q.column("_biomask_reason").to_pylist() == [
        "e: e-mail local part without an ASCII letter or digit: nothing to tokenize "
        "(use hash (length >= 32) or redact)"
    ]


def test_invalid_email_is_quarantined_not_passed() -> None:
    m = masker("  e: {op: email, domain: email}\n  k: {op: keep}\n")
    out, q = run(m, e=["alice@b.example", "not-an-email"], k=[1, 2])
    assert out.num_rows == 1 and q is not None and q.num_rows == 1
    assert q.column("e").to_pylist() == [None]
    assert q.column("_biomask_reason").to_pylist() == ["e: not an e-mail address"]


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["+44", "+1", "+374", "+49", "+33", "+7", "+353"]),
    st.lists(st.integers(0, 9), min_size=6, max_size=11),
    st.sampled_from([" ", "-", "", ".", " ("]),
)
def test_phone_keeps_country_code_and_digits(cc: str, digits: list[int], sep: str) -> None:
    body = "".join(map(str, digits))
    value = f"{cc}{sep}{body[:3]}{sep}{body[3:]}"
    m = masker("  p: {op: phone, domain: phone}\n")
    out, q = run(m, p=[value])
    assert q is None
    t = out.column("p")[0].as_py()
    assert t.startswith(cc)
    assert len(t) == len(value)
    assert sum(c.isdigit() for c in t) == sum(c.isdigit() for c in value)
    assert [c for c in t if not c.isdigit()] == [c for c in value if not c.isdigit()]


def test_phone_formats_of_one_number_agree() -> None:
    m = masker("  p: {op: phone, domain: phone}\n")
    out, _ = run(m, p=["+44 20 7946 0958", "020 7946 0958", "+442079460958"])
    a, b, c = out.column("p").to_pylist()
    assert a[4:].replace(" ", "") == b[1:].replace(" ", "") == c[3:]
    assert phone_parts("+1 (202) 555-0143") == (2, "2025550143")


def test_tokenize_and_hash_consistent_across_columns() -> None:
    m = masker(
        "  a: {op: tokenize, domain: subject}\n  b: {op: tokenize, domain: subject}\n"
        "  c: {op: tokenize, domain: other}\n  h: {op: hash, domain: device, length: 16}\n"
    )
    out, _ = run(m, a=["SUBJ-00000001"], b=["SUBJ-00000001"], c=["SUBJ-00000001"], h=["DV-1"])
    assert out.column("a") == out.column("b")
    assert out.column("a") != out.column("c")
    assert re.fullmatch(r"[0-9a-f]{16}", out.column("h")[0].as_py())


def test_pseudonym_variants_agree() -> None:
    m = masker("  n: {op: pseudonym, domain: person}\n")
    out, _ = run(
        m,
        n=[
            "Isabel Petrosyan",
            "PETROSYAN, Isabel",
            "Ms Petrosyan",
            "isabel petrosyan",
            "José Müller",
            "Jose Muller",
            None,
        ],
    )
    full, rev, title, low, jose1, jose2, none = out.column("n").to_pylist()
    given_, family = full.split(" ")
    assert rev == f"{family.upper()}, {given_}"
    assert title == f"Ms {family}"
    assert low == full.lower()
    assert jose1 == jose2
    assert none is None
    assert "Petrosyan" not in full and "Isabel" not in full


def test_mask_redact_drop_keep() -> None:
    m = masker(
        "  c: {op: mask, keep_last: 4}\n  r: {op: redact}\n  d: {op: drop}\n  k: {op: keep}\n"
    )
    out, _ = run(
        m, c=["4111111111111111", "123", None], r=["x", None, "y"], d=[1, 2, 3], k=[1, 2, 3]
    )
    assert out.schema.names == ["c", "r", "k"]
    assert out.column("c").to_pylist() == ["************1111", "***", None]
    assert out.column("r").to_pylist() == ["[REDACTED]", None, "[REDACTED]"]


def test_date_shift_is_per_entity_and_keeps_types() -> None:
    ents = "entities:\n  subject: {column: s}\n"
    m = masker(
        "  s: {op: tokenize, domain: subject}\n  d: {op: date_shift, entity: subject}\n"
        "  ts: {op: date_shift, entity: subject}\n  txt: {op: date_shift, entity: subject, format: '%d/%m/%Y'}\n",
        ents,
    )
    utc = dt.UTC
    out, q = run(
        m,
        s=["SUBJ-000001", "SUBJ-000001", "SUBJ-000002"],
        d=pa.array([dt.date(1990, 1, 1), dt.date(1990, 1, 11), dt.date(1990, 1, 1)], pa.date32()),
        ts=pa.array(
            [dt.datetime(2020, 5, 1, 10, tzinfo=utc)] * 3, pa.timestamp("us", tz="Europe/Paris")
        ),
        txt=["01/02/2020", "11/02/2020", "01/02/2020"],
    )
    assert q is None
    assert out.schema.field("d").type == pa.date32()
    assert out.schema.field("ts").type == pa.timestamp("us", tz="Europe/Paris")
    d = out.column("d").to_pylist()
    assert (d[1] - d[0]).days == 10  # interval within a subject survives
    shift1 = (d[0] - dt.date(1990, 1, 1)).days
    shift2 = (d[2] - dt.date(1990, 1, 1)).days
    assert shift1 != 0 and abs(shift1) <= 365
    ts = out.column("ts").to_pylist()
    assert (ts[0].astimezone(utc).date() - dt.date(2020, 5, 1)).days == shift1
    txt = out.column("txt").to_pylist()
    assert dt.datetime.strptime(txt[0], "%d/%m/%Y").date() - dt.date(2020, 2, 1) == dt.timedelta(
        days=shift1
    )
    assert dt.datetime.strptime(txt[2], "%d/%m/%Y").date() - dt.date(2020, 2, 1) == dt.timedelta(
        days=shift2
    )


def test_unparseable_date_string_is_quarantined() -> None:
    ents = "entities:\n  subject: {column: s}\n"
    m = masker(
        "  s: {op: tokenize, domain: subject}\n  d: {op: date_shift, entity: subject}\n", ents
    )
    out, q = run(m, s=["A-000001", "A-000002"], d=["2020-01-01", "31 Febtember"])
    assert out.num_rows == 1 and q is not None
    assert q.column("_biomask_reason")[0].as_py() == "d: not a date in format %Y-%m-%d"
    assert q.column("d")[0].as_py() is None


def test_generalize() -> None:
    m = masker(
        "  age: {op: generalize, bucket: 10}\n  lat: {op: generalize, decimals: 1}\n"
        "  day: {op: generalize, truncate: month}\n"
    )
    out, _ = run(
        m,
        age=pa.array([34, 47, None], pa.int32()),
        lat=[51.234, -3.99, 0.0],
        day=pa.array([dt.date(2020, 5, 17), dt.date(1999, 12, 31), None], pa.date32()),
    )
    assert out.column("age").to_pylist() == [30, 40, None]
    assert out.schema.field("age").type == pa.int32()
    assert out.column("lat").to_pylist() == [51.2, -4.0, 0.0]
    assert out.column("day").to_pylist() == [dt.date(2020, 5, 1), dt.date(1999, 12, 1), None]


@pytest.mark.parametrize(
    ("rule", "values", "message"),
    [
        (
            "{op: date_shift, entity: subject}",
            [1.5],
            r"policy>:\d+: columns.x: date_shift takes date, timestamp or date-string columns, not double",
        ),
        (
            "{op: tokenize, domain: d}",
            [1.5],
            r"columns.x: tokenize takes string or integer columns, not double \(use hash\)",
        ),
        (
            "{op: tokenize, domain: d}",
            pa.array([1], pa.int16()),
            r"columns.x: tokenize takes integers of 32 bits or more: a int16 holds fewer values"
            r" than FF1's minimum domain of 10\^6",
        ),
        (
            "{op: tokenize, domain: d, format: luhn}",
            [4111],
            r"columns.x: format: luhn takes string columns, not int64",
        ),
        (
            "{op: tokenize, domain: d, prefix: ID-}",
            [4111],
            r"columns.x: prefix takes string columns; an integer token keeps no prefix \(int64\)",
        ),
        (
            "{op: generalize, truncate: year}",
            ["a"],
            r"columns.x: generalize with truncate takes date or timestamp columns",
        ),
    ],
)
def test_type_mismatch_names_policy_line(rule: str, values: list[object], message: str) -> None:
    ents = "entities:\n  subject: {column: s}\n"
    m = masker(f"  s: {{op: tokenize, domain: subject}}\n  x: {rule}\n", ents)
    from biomask.errors import PolicyError

    with pytest.raises(PolicyError, match=message):
        run(m, s=["a"], x=values)
