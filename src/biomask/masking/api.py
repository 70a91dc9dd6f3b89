"""``biomask.mask``: mask an in-memory pyarrow Table or Polars DataFrame."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, overload

import pyarrow as pa

from biomask.errors import BiomaskError, QuarantineLimitError
from biomask.keys import Keyring
from biomask.masking.masker import Masker
from biomask.masking.services import RunServices
from biomask.policies import Policy, load_policy, policy_from_dict

if TYPE_CHECKING:
    import polars as pl

__all__ = ["PolicyLike", "mask", "resolve_policy"]

PolicyLike = Policy | str | os.PathLike[str] | dict[str, Any]


def resolve_policy(policy: PolicyLike) -> Policy:
    """Accept a Policy, a path to a policy file, or a mapping."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, dict):
        return policy_from_dict(policy)
    return load_policy(policy)


@overload
def mask(
    data: pl.DataFrame,
    policy: PolicyLike,
    keyring: Keyring,
    *,
    table: str | None = ...,
    max_quarantine: int = ...,
    with_quarantine: Literal[False] = ...,
) -> pl.DataFrame: ...
@overload
def mask(
    data: pa.Table | pa.RecordBatch,
    policy: PolicyLike,
    keyring: Keyring,
    *,
    table: str | None = ...,
    max_quarantine: int = ...,
    with_quarantine: Literal[False] = ...,
) -> pa.Table: ...
@overload
def mask(
    data: Any,
    policy: PolicyLike,
    keyring: Keyring,
    *,
    table: str | None = ...,
    max_quarantine: int = ...,
    with_quarantine: Literal[True],
) -> tuple[Any, pa.Table]: ...


def mask(
    data: Any,
    policy: PolicyLike,
    keyring: Keyring,
    *,
    table: str | None = None,
    max_quarantine: int = 0,
    with_quarantine: bool = False,
) -> Any:
    """Mask a pyarrow Table or Polars DataFrame and return the same kind of object.

    The result is identical to what ``biomask mask`` writes for the same rows: tokens
    depend only on the value, the domain and the keyring.

    Parameters
    ----------
    data:
        A ``pyarrow.Table`` (or RecordBatch) or a ``polars.DataFrame``.
    policy:
        A :class:`~biomask.policies.Policy`, a path to a policy file, or a mapping.
    keyring:
        The keyring (``Keyring.open(path)``).
    table:
        Which table of a multi-table policy the data belongs to.
    max_quarantine:
        How many rows may fail to mask before this raises (default 0: any failed row
        raises). A limit above 0 needs ``with_quarantine=True``: rows are never dropped
        without the caller receiving them.
    with_quarantine:
        Return ``(masked, quarantine)``: the quarantine is a ``pyarrow.Table`` of the rows
        that failed, masked wherever possible, with a ``_biomask_reason`` column.

    Returns
    -------
    The masked data (same kind as ``data``), or ``(masked, quarantine)``.

    Raises
    ------
    QuarantineLimitError
        More rows than ``max_quarantine`` could not be masked (e.g. unparseable dates).
    BiomaskError
        ``max_quarantine`` above 0 without ``with_quarantine=True``.
    PolicyError
        A rule failed on every value of a batch (a policy problem); names the rule's line.
    """
    if max_quarantine > 0 and not with_quarantine:
        raise BiomaskError(
            f"mask(max_quarantine={max_quarantine}) would drop failed rows silently: pass "
            "with_quarantine=True to receive them as (masked, quarantine)"
        )
    pol = resolve_policy(policy)
    is_polars = type(data).__module__.startswith("polars")
    if is_polars:
        tbl = data.to_arrow()
    elif isinstance(data, pa.RecordBatch):
        tbl = pa.Table.from_batches([data])
    elif isinstance(data, pa.Table):
        tbl = data
    else:
        raise BiomaskError(
            f"mask() takes a pyarrow Table or a polars DataFrame, not {type(data).__name__}"
        )
    masker = Masker(pol, keyring, table=table)
    schema = masker.output_schema(tbl.schema)
    # the run's handshake, as the pipeline makes it: what the Masker declares (the text
    # lexicon's linked columns) is taken from the rows given, so names, e-mails and phones
    # of those columns become known values in the notes of the same rows
    masker.prepare(RunServices.from_tables({masker.table: tbl}, masker.needs()))
    outs: list[pa.RecordBatch] = []
    quarantined: list[pa.RecordBatch] = []
    failed = 0
    for batch in tbl.to_batches():
        res = masker.mask_batch(batch)
        outs.append(res.output)
        if res.quarantine is not None:
            failed += res.quarantine.num_rows
            quarantined.append(res.quarantine)
    if failed > max_quarantine:
        raise QuarantineLimitError(
            f"{failed} of {tbl.num_rows} rows could not be masked (e.g. unparseable values); "
            "run 'biomask mask' to see them in the quarantine output with their reasons"
        )
    result: Any = pa.Table.from_batches(outs, schema=schema)
    if is_polars:
        import polars as pl

        result = pl.from_arrow(result)
    if not with_quarantine:
        return result
    q_schema = masker._bind(tbl.schema)[1]
    return result, pa.Table.from_batches(quarantined, schema=q_schema)
