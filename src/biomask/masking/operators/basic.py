"""Operators without keys: keep, drop, redact, mask."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from biomask.masking.registry import Operator, OperatorContext, is_string_type, register
from biomask.policies.models import DropOp, KeepOp, MaskOp, RedactOp

__all__ = ["Drop", "Keep", "Mask", "Redact"]


@register
class Keep(Operator[KeepOp]):
    """Identity: for columns that identify no one (quality scores, modality)."""

    name = "keep"
    parallel_safe = True

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        return values


@register
class Drop(Operator[DropOp]):
    """Removes the column; the Masker never calls it."""

    name = "drop"
    parallel_safe = True
    keeps_column = False

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:  # pragma: no cover
        raise AssertionError("drop is applied by the Masker")


@register
class Redact(Operator[RedactOp]):
    """Every non-null value becomes the replacement (nulls stay null: absence is no PII)."""

    name = "redact"
    parallel_safe = True

    def output_type(self, dtype: pa.DataType) -> pa.DataType:
        return pa.string()

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        if self.spec.replacement is None:
            return pa.nulls(len(values), pa.string())
        const = pa.scalar(self.spec.replacement, pa.string())
        return pc.if_else(pc.is_null(values), pa.scalar(None, pa.string()), const)


@register
class Mask(Operator[MaskOp]):
    """Overwrite characters, keeping a few at either end (``****0958``)."""

    name = "mask"
    parallel_safe = True

    def check(self, dtype: pa.DataType) -> str | None:
        return None if is_string_type(dtype) else "mask takes string columns"

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        kf, kl = self.spec.keep_first, self.spec.keep_last
        n = pc.utf8_length(values)
        hidden = pc.max_element_wise(pc.subtract(n, kf + kl), 0)
        head = (
            pc.utf8_slice_codeunits(values, 0, kf) if kf else pc.utf8_slice_codeunits(values, 0, 0)
        )
        # utf8_slice_codeunits takes scalar bounds; take the tail by reversing.
        tail = (
            pc.utf8_reverse(pc.utf8_slice_codeunits(pc.utf8_reverse(values), 0, kl))
            if kl
            else pc.utf8_slice_codeunits(values, 0, 0)
        )
        stars = pc.binary_repeat(pa.scalar(self.spec.char), hidden)
        out = pc.binary_join_element_wise(head, stars, tail, "")
        # a value no longer than the kept characters would pass through whole: hide it all
        everything = pc.binary_repeat(pa.scalar(self.spec.char), n)
        out = pc.if_else(pc.equal(hidden, 0), everything, out)
        return out.cast(values.type)
