"""date_shift and generalize.

Date shifting moves every date of one entity (a subject) by the same number of days, so
intervals within that subject (age at capture, time between captures) survive exactly while
the absolute dates do not. The offset is a keyed PRF of the entity's *token* (the masked
value of the entity column in the same row), so every table that carries the entity column
shifts that subject's dates consistently, with no shared state between runs or workers.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from biomask.keys.primitives import DeterministicPrf
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    dictionary_encode,
    expand,
    is_string_type,
    register,
)
from biomask.policies.models import DateShiftOp, GeneralizeOp

__all__ = ["DATE_FORMATS", "DateShift", "Generalize", "entity_max_days"]

#: formats tried, in order, on string date columns without an explicit ``format``
DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
    "%d-%m-%Y",
    "%Y%m%d",
)
#: offsets never used (ascending): no shift, and whole years (see DateShift.offsets)
_NEVER = (-366, -365, 0, 365, 366)
_UNIT_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def entity_max_days(binding: Binding, entity: str) -> int:
    """The entity's offset range (:meth:`Policy.entity_max_days`).

    One range per entity (not per column, table or run) is what keeps intervals between
    an entity's dates exact, also between tables masked in different runs.
    """
    return binding.policy.entity_max_days(entity)


@register
class DateShift(Operator[DateShiftOp]):
    """Per-entity consistent date shift for dates, timestamps (any unit/zone) and strings."""

    name = "date_shift"
    parallel_safe = True
    needs_entities = True

    def __init__(self, spec: DateShiftOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        self.max_days = entity_max_days(binding, spec.entity)
        self.prf = DeterministicPrf(binding.keyring.derive_token("date_shift", spec.entity))

    @property
    def key_id(self) -> str | None:
        return self.prf.key_id

    def check(self, dtype: pa.DataType) -> str | None:
        ok = pa.types.is_date(dtype) or pa.types.is_timestamp(dtype) or is_string_type(dtype)
        return (
            None if ok else f"date_shift takes date, timestamp or date-string columns, not {dtype}"
        )

    def offsets(
        self, tokens: pa.Array, distinct: tuple[pa.Array, pa.Array] | None = None
    ) -> pa.Array:
        """Offset in days per row, null where the entity token is null.

        Never 0, and never a whole year (365 or 366 days either way): such a shift would
        leave a birthday, or a date written without its year in a note ("5 July"),
        exactly as it was.

        ``distinct`` is the tokens as (row indices, distinct tokens), when the entity
        column's operator already has them; otherwise the tokens are dictionary-encoded
        here. Either way the PRF runs once per distinct token.
        """
        if distinct is None:
            enc = dictionary_encode(tokens.cast(pa.string()))
            indices, raw = enc.indices, enc.dictionary
        else:
            indices, raw = distinct
        m = self.max_days
        skip = [e for e in _NEVER if -m <= e <= m]
        r = self.prf.integers(raw, 2 * m + 1 - len(skip)) - m
        for e in skip:  # ascending: each excluded value is stepped over in turn
            r[r >= e] += 1
        mask = raw.is_null().to_numpy(zero_copy_only=False) if raw.null_count else None
        return expand(pa.array(r, pa.int64(), mask=mask), indices)

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        tokens = ctx.entity_tokens.get(self.spec.entity)
        if tokens is None:  # pragma: no cover - the Masker binds entities first
            raise AssertionError("entity tokens missing")
        # every date column of the entity shifts by the same days: computed once a batch
        column = self.binding.policy.entities[self.spec.entity].column
        days = ctx.memo.get(
            ("date_shift", self.spec.entity, self.max_days),
            lambda: self.offsets(tokens, ctx.memo.peek(("tokens", column))),
        )
        no_key = pc.and_(pc.is_valid(values), pc.is_null(days))
        if pc.any(no_key).as_py():
            ctx.quarantine(no_key, f"no {self.spec.entity} key to shift the date by")
        t = values.type
        if pa.types.is_date32(t):
            return pc.add(values.cast(pa.int32()).cast(pa.int64()), days).cast(pa.int32()).cast(t)
        if pa.types.is_date64(t):
            return pc.add(values.cast(pa.int64()), pc.multiply(days, 86_400_000)).cast(t)
        if pa.types.is_timestamp(t):
            step = pc.multiply(days, _UNIT_PER_DAY[t.unit])
            return pc.add(values.cast(pa.int64()), step).cast(t)
        return self._strings(values, days, ctx)

    def _strings(self, values: pa.Array, days: pa.Array, ctx: OperatorContext) -> pa.Array:
        fmt = self.spec.format or _detect_format(values)
        if fmt is None:
            bad = pc.is_valid(values)
            ctx.quarantine(bad, "not a date in a known format (set 'format' in the policy)")
            return pa.nulls(len(values), values.type)
        parsed = pc.strptime(values, format=fmt, unit="s", error_is_null=True)
        unparsed = pc.and_(pc.is_valid(values), pc.is_null(parsed))
        if pc.any(unparsed).as_py():
            ctx.quarantine(unparsed, f"not a date in format {fmt}")
        shifted = pc.add(parsed.cast(pa.int64()), pc.multiply(days, 86_400)).cast(pa.timestamp("s"))
        return pc.strftime(shifted, format=fmt).cast(values.type)


def _detect_format(values: pa.Array) -> str | None:
    n_valid = len(values) - values.null_count
    if n_valid == 0:
        return DATE_FORMATS[0]
    best, best_n = None, 0
    for fmt in DATE_FORMATS:
        parsed = (
            len(values) - pc.strptime(values, format=fmt, unit="s", error_is_null=True).null_count
        )
        if parsed > best_n:
            best, best_n = fmt, parsed
        if parsed == n_valid:
            break
    return best


@register
class Generalize(Operator[GeneralizeOp]):
    """Coarsen values: numeric buckets, rounding (coordinates), month/year truncation."""

    name = "generalize"
    parallel_safe = True

    def check(self, dtype: pa.DataType) -> str | None:
        numeric = pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
        temporal = pa.types.is_date(dtype) or pa.types.is_timestamp(dtype)
        s = self.spec
        if s.bucket is not None and not numeric:
            return f"generalize with bucket takes numeric columns, not {dtype}"
        if s.decimals is not None and not pa.types.is_floating(dtype):
            return f"generalize with decimals takes floating-point columns, not {dtype}"
        if s.truncate is not None and not temporal:
            return f"generalize with truncate takes date or timestamp columns, not {dtype}"
        return None

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        s = self.spec
        if s.bucket is not None:
            b = float(s.bucket)
            out = pc.multiply(pc.floor(pc.divide(values.cast(pa.float64()), b)), b)
            return out.cast(values.type, safe=False)
        if s.decimals is not None:
            return pc.round(values, ndigits=s.decimals)
        assert s.truncate is not None
        if pa.types.is_date32(values.type):
            as_ts = values.cast(pa.timestamp("s"))
            return pc.floor_temporal(as_ts, unit=s.truncate).cast(pa.date32())
        return pc.floor_temporal(values, unit=s.truncate)
