"""``biomask.mask``: rows are never dropped without the caller receiving them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from biomask import mask
from biomask.errors import BiomaskError, PolicyError, QuarantineLimitError
from biomask.keys import Keyring
from biomask.masking import REASON_COLUMN

POLICY = {
    "version": 1,
    "dataset": "people",
    "entities": {"subject": {"column": "subject_id"}},
    "columns": {
        "subject_id": {"op": "tokenize", "domain": "subject"},
        "dob": {"op": "date_shift", "entity": "subject", "format": "%Y-%m-%d"},
    },
}


def _data(bad: int, n: int = 10) -> pa.Table:
    return pa.table(
        {
            "subject_id": [f"S{i:06d}" for i in range(n)],
            "dob": ["not a date" if i < bad else f"1990-01-{10 + i}" for i in range(n)],
        }
    )


def test_any_failed_row_raises_by_default() -> None:
    ring = Keyring.ephemeral()
    assert mask(_data(0), POLICY, ring).num_rows == 10
    with pytest.raises(QuarantineLimitError, match=r"^1 of 10 rows could not be masked"):
        mask(_data(1), POLICY, ring)


def test_a_limit_needs_the_caller_to_take_the_quarantine() -> None:
    ring = Keyring.ephemeral()
    with pytest.raises(BiomaskError) as info:
        mask(_data(1), POLICY, ring, max_quarantine=2)
    assert str(info.value) == (
        "mask(max_quarantine=2) would drop failed rows silently: pass with_quarantine=True "
        "to receive them as (masked, quarantine)"
    )
    masked, quarantine = mask(_data(2), POLICY, ring, max_quarantine=2, with_quarantine=True)
    assert masked.num_rows == 8 and quarantine.num_rows == 2
    assert (
        quarantine.column(REASON_COLUMN).to_pylist() == ["dob: not a date in format %Y-%m-%d"] * 2
    )
    assert "S000000" not in quarantine.column("subject_id").to_pylist()  # masked where possible
    with pytest.raises(QuarantineLimitError):
        mask(_data(3), POLICY, ring, max_quarantine=2, with_quarantine=True)
    clean, empty = mask(_data(0), POLICY, ring, with_quarantine=True)
    assert clean.num_rows == 10 and empty.num_rows == 0


def test_polars_in_polars_out_with_the_quarantine_as_arrow() -> None:
    pl = pytest.importorskip("polars")
    masked, quarantine = mask(
        pl.from_arrow(_data(1)), POLICY, Keyring.ephemeral(), max_quarantine=1,
        with_quarantine=True,
    )  # fmt: skip
    assert isinstance(masked, pl.DataFrame) and masked.height == 9
    assert isinstance(quarantine, pa.Table) and quarantine.num_rows == 1


def test_a_rule_failing_on_every_value_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match=r"columns\.dob: the rule failed on every value"):
        mask(_data(10), POLICY, Keyring.ephemeral(), max_quarantine=10, with_quarantine=True)
