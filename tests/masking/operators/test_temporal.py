"""date_shift: one offset per entity in every run and table (issue #21)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.policies import parse_policy

SUBJECTS = """\
version: 1
dataset: d
entities:
  subject: {column: subject_id, max_days: 365}
columns:
  subject_id: {op: tokenize, domain: subject}
  dob: {op: date_shift, entity: subject}
"""

BOTH = """\
version: 1
dataset: d
entities:
  subject: {column: subject_id, max_days: 365}
tables:
  subjects:
    columns:
      subject_id: {op: tokenize, domain: subject}
      dob: {op: date_shift, entity: subject}
  captures:
    columns:
      subject_id: {op: tokenize, domain: subject}
      seen: {op: date_shift, entity: subject, max_days: 365}
"""


def test_one_subject_one_offset_in_every_run_and_table() -> None:
    ring = Keyring.ephemeral()
    ids = [f"SUBJ-{i:06d}" for i in range(200)]
    dob = pa.array([dt.date(1980, 1, 1)] * len(ids))
    subjects = pa.record_batch([pa.array(ids), dob], names=["subject_id", "dob"])
    alone = Masker(parse_policy(SUBJECTS), ring).mask_batch(subjects).output
    together = Masker(parse_policy(BOTH), ring, table="subjects").mask_batch(subjects).output
    assert alone.column("dob").equals(together.column("dob"))
    captures = pa.record_batch(
        [pa.array(ids), pa.array([dt.date(1980, 1, 1)] * len(ids))], names=["subject_id", "seen"]
    )
    seen = Masker(parse_policy(BOTH), ring, table="captures").mask_batch(captures).output
    assert seen.column("seen").equals(alone.column("dob"))
    days = {(d - dt.date(1980, 1, 1)).days for d in alone.column("dob").to_pylist()}
    assert 0 not in days and max(abs(d) for d in days) <= 365 and len(days) > 100


def test_offsets_are_never_zero_nor_a_whole_year() -> None:
    from biomask.masking.operators.temporal import DateShift
    from biomask.masking.registry import Binding
    from biomask.policies.models import DateShiftOp

    policy = parse_policy(SUBJECTS.replace("max_days: 365", "max_days: 367"))
    op = DateShift(
        DateShiftOp.model_validate({"op": "date_shift", "entity": "subject"}),
        Binding(policy, Keyring.ephemeral(), "d", "dob"),
    )
    days = op.offsets(pa.array([f"S{i}" for i in range(200_000)])).to_numpy()
    assert days.min() == -367 and days.max() == 367
    assert not ({0, 365, 366, -365, -366} & set(days.tolist()))
    assert len(set(days.tolist())) == 2 * 367 - 4
