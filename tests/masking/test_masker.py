"""The Masker's contract: consistency, relationships, fail-closed, nothing left behind."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import biomask
from biomask.demo import generate
from biomask.demo.run import demo_policy_text
from biomask.errors import SchemaError
from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.policies import parse_policy

RING = Keyring.ephemeral()
POLICY = parse_policy(demo_policy_text(), source="enrolment-policy.yaml")
DATA = generate(300, seed=11)


def mask_table(table: pa.Table, name: str, batch_size: int = 64) -> pa.Table:
    m = Masker(POLICY, RING, table=name)
    outs = []
    for b in table.to_batches(max_chunksize=batch_size):
        res = m.mask_batch(b)
        assert res.quarantine is None
        outs.append(res.output)
    return pa.Table.from_batches(outs, schema=m.output_schema(table.schema))


def test_join_survives_masking_tables_separately() -> None:
    subjects = mask_table(DATA.subjects, "subjects")
    captures = mask_table(DATA.captures, "captures", batch_size=37)
    before = DATA.captures.drop_columns(["template"]).join(DATA.subjects, "subject_id").num_rows
    after = captures.join(subjects, "subject_id").num_rows
    assert before == after == DATA.captures.num_rows


def test_intervals_within_subject_survive() -> None:
    subjects = mask_table(DATA.subjects, "subjects")
    captures = mask_table(DATA.captures, "captures")
    # capture ids are tokenized, so compare per original row order: mask keeps row order
    b = DATA.captures.append_column("row", pa.array(range(DATA.captures.num_rows)))
    a = captures.append_column("row", pa.array(range(captures.num_rows)))
    jb = (
        b.drop_columns(["template"])
        .join(DATA.subjects.select(["subject_id", "date_of_birth"]), "subject_id")
        .sort_by("row")
    )
    ja = a.join(subjects.select(["subject_id", "date_of_birth"]), "subject_id").sort_by("row")
    db = pc.days_between(
        pc.cast(jb["date_of_birth"], pa.timestamp("s")),
        pc.cast(jb["capture_ts"], pa.timestamp("s")),
    )
    da = pc.days_between(
        pc.cast(ja["date_of_birth"], pa.timestamp("s")),
        pc.cast(ja["capture_ts"], pa.timestamp("s")),
    )
    assert db.to_pylist() == da.to_pylist()
    assert jb["capture_ts"] != ja["capture_ts"]


def test_batch_size_and_split_do_not_change_tokens() -> None:
    whole = mask_table(DATA.captures, "captures", batch_size=10_000)
    small = mask_table(DATA.captures, "captures", batch_size=7)
    half = DATA.captures.num_rows // 2
    first = mask_table(DATA.captures.slice(0, half), "captures")
    second = mask_table(DATA.captures.slice(half), "captures")
    # templates are encrypted with random nonces (by design); every other column is
    # byte-identical however the input is split
    det = [c for c in whole.column_names if c != "template"]
    assert whole.select(det).equals(small.select(det))
    assert whole.select(det).equals(pa.concat_tables([first, second]).select(det))
    # in another process the same keyring gives the same tokens: covered by the CLI tests


def test_no_original_value_of_a_masked_column_survives() -> None:
    subjects = mask_table(DATA.subjects, "subjects")
    masked_cols = [
        c
        for c, op in POLICY.table_specs()["subjects"].columns.items()
        if op.op not in ("keep", "date_shift")
    ]
    out_values: set[str] = set()
    for col in subjects.columns:
        out_values.update(str(v) for v in col.to_pylist() if v is not None)
    for c in masked_cols:
        for v in DATA.subjects[c].to_pylist():
            if v is not None:
                assert str(v) not in out_values, c
    # name parts: no original given or family name appears as a word in the output names
    words = {w.strip(",.").lower() for n in subjects["full_name"].to_pylist() for w in n.split()}
    for n in DATA.subjects["full_name"].to_pylist():
        for w in n.split():
            assert w.strip(",.").lower() not in words, "name part survived"


def test_unlisted_column_is_an_error() -> None:
    extra = DATA.subjects.append_column("ssn", pa.array(["x"] * DATA.subjects.num_rows))
    m = Masker(POLICY, RING, table="subjects")
    with pytest.raises(SchemaError) as info:
        m.output_schema(extra.schema)
    assert str(info.value) == (
        "column 'ssn' of table 'subjects' is not in enrolment-policy.yaml: add a rule for it, "
        "or set 'unlisted: drop' or 'unlisted: keep' explicitly"
    )


def test_policy_column_missing_from_input() -> None:
    m = Masker(POLICY, RING, table="subjects")
    with pytest.raises(
        SchemaError,
        match="names column 'email' of table 'subjects', but the input has no such column",
    ):
        m.output_schema(DATA.subjects.drop_columns(["email"]).schema)


def test_unlisted_drop_and_keep() -> None:
    tbl = pa.table({"a": ["SUBJ-000001"], "b": ["y"]})
    for mode, names in (("drop", ["a"]), ("keep", ["a", "b"])):
        pol = parse_policy(
            f"version: 1\ndataset: t\nunlisted: {mode}\ncolumns:\n  a: {{op: tokenize, domain: d}}\n"
        )
        assert biomask.mask(tbl, pol, RING).column_names == names


def test_mask_api_polars_and_arrow_agree() -> None:
    import polars as pl

    tbl = DATA.subjects
    out_arrow = biomask.mask(tbl, POLICY, RING, table="subjects")
    out_pl = biomask.mask(pl.from_arrow(tbl), POLICY, RING, table="subjects")
    assert isinstance(out_pl, pl.DataFrame)
    assert (
        out_pl.to_arrow().column("subject_id").to_pylist()
        == out_arrow.column("subject_id").to_pylist()
    )


def test_other_keyring_other_tokens() -> None:
    a = mask_table(DATA.subjects.slice(0, 5), "subjects")
    m = Masker(POLICY, Keyring.ephemeral(), table="subjects")
    b = m.mask_batch(DATA.subjects.slice(0, 5).to_batches()[0]).output
    assert a["subject_id"].to_pylist() != b.column("subject_id").to_pylist()


def test_column_threads_do_not_change_output_or_quarantine_reasons() -> None:
    # a row that fails in two columns is recorded with the first column's reason, and a
    # row that fails in one column only with that column's, whichever thread ends first
    text = """\
version: 1
dataset: threads
entities:
  subject: {column: sid}
columns:
  sid: {op: tokenize, domain: subject}
  email: {op: email, domain: email}
  phone: {op: phone, domain: phone}
  born: {op: date_shift, entity: subject}
  seen: {op: date_shift, entity: subject}
"""
    policy = parse_policy(text, source="threads.yaml")
    n = 500
    batch = pa.RecordBatch.from_pydict(
        {
            "sid": [f"S-{i % 97:06d}" for i in range(n)],
            "email": [("no-at-sign" if i % 7 == 0 else f"p{i}@example.org") for i in range(n)],
            "phone": [("12" if i % 5 == 0 else f"+44 20 7946 {i:04d}") for i in range(n)],
            "born": [("31/02/1990" if i % 11 == 0 else "1990-03-04") for i in range(n)],
            "seen": ["2024-01-02" for _ in range(n)],
        }
    )
    results = [Masker(policy, RING, threads=t).mask_batch(batch) for t in (1, 2, 4, 4)]
    first = results[0]
    assert first.quarantine is not None
    reasons = first.quarantine.column("_biomask_reason").to_pylist()
    assert any(r.startswith("email:") for r in reasons)
    assert any(r.startswith("phone:") for r in reasons)
    assert any(r.startswith("born:") for r in reasons)
    assert first.output.num_rows + first.quarantine.num_rows == n
    # row 0 fails in email, phone and born: the email rule comes first in the policy
    assert reasons[0].startswith("email:")
    for other in results[1:]:
        assert other.output.equals(first.output)
        assert other.quarantine is not None and other.quarantine.equals(first.quarantine)
        assert other.stats == first.stats
    # both date columns of a subject moved by the same days (computed once per batch)
    import datetime as dt

    out = first.output.to_pydict()
    gap = dt.date(2024, 1, 2) - dt.date(1990, 3, 4)
    pairs = list(zip(out["born"], out["seen"], strict=True))
    assert pairs and all(
        dt.date.fromisoformat(s) - dt.date.fromisoformat(b) == gap for b, s in pairs
    )
    assert len(set(out["seen"])) > 1


def test_batch_memo_computes_once_across_threads() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from biomask.masking.registry import BatchMemo

    memo = BatchMemo()
    calls = []
    gate = threading.Event()

    def compute() -> int:
        calls.append(1)
        gate.wait(1)
        return 42

    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(memo.get, "k", compute) for _ in range(4)]
        gate.set()
        assert [f.result() for f in futs] == [42] * 4
    assert len(calls) == 1
    assert memo.get("other", lambda: 7) == 7


def test_default_threads_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from biomask.masking.masker import default_threads

    monkeypatch.setenv("BIOMASK_THREADS", "3")
    assert default_threads() == 3
    assert Masker(POLICY, RING, table="subjects").threads == 3
    assert Masker(POLICY, RING, table="subjects", threads=0).threads == 1
    monkeypatch.setenv("BIOMASK_THREADS", "lots")  # not a number: the default
    assert 1 <= default_threads() <= 4


def test_date_offsets_from_the_entity_columns_distinct_tokens_match() -> None:
    # date_shift reuses the entity column's (indices, distinct tokens) when tokenize
    # offers them; the days must be those computed from the tokens themselves, nulls and
    # refused ids (bad check digit: quarantined, token null) included
    from biomask.masking.registry import OperatorContext

    text = """\
version: 1
dataset: offsets
entities:
  subject: {column: card}
columns:
  card: {op: tokenize, domain: card, format: luhn}
  seen: {op: date_shift, entity: subject}
"""
    policy = parse_policy(text, source="offsets.yaml")
    cards = ["4111111111111111", "4111111111111112", None, "5500005555555559"] * 25
    batch = pa.RecordBatch.from_pydict({"card": cards, "seen": ["2024-01-02"] * 100})
    m = Masker(policy, RING, threads=1)
    tok_op, shift_op = m.operators["card"], m.operators["seen"]
    ctx = OperatorContext("offsets", "card", batch, {}, np.zeros(100, dtype=bool))
    tokens = tok_op(batch.column("card"), ctx)
    offered = ctx.memo.peek(("tokens", "card"))
    assert offered is not None
    assert shift_op.offsets(tokens, offered).equals(shift_op.offsets(tokens))
    assert shift_op.offsets(tokens).null_count == 50  # the bad card and the nulls
