"""What the text formats (CSV, JSON Lines) share: flagging untrusted rows, spelling bytes.

Untrusted text is flagged, not fatal: invalid UTF-8 in a field is decoded with U+FFFD
and the row is flagged in :data:`~biomask.connectors.REJECT_COLUMN` so the masker
quarantines it; a run does not die on one bad byte, and the bad row is never passed
through silently. Text formats have no bytes type, so binary columns are written as
base64, the conventional lossless spelling.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from biomask.connectors.base import REJECT_COLUMN

__all__ = ["MAX_FIELD_BYTES", "flag_text", "text_safe"]

#: A text field larger than this is flagged (REJECT_COLUMN) rather than trusted: no
#: enrolment field is legitimately this large, and the masker should not spend time on it.
MAX_FIELD_BYTES = 1 << 20

#: A format's own spelling of one non-binary column: (name, values, type) -> (values, type).
Respell = Callable[[str, pa.Array, pa.DataType], tuple[pa.Array, pa.DataType]]


def flag_text(
    batch: pa.RecordBatch,
    offset: int,
    unit: str,
    numbers: Sequence[int] | None = None,
    reasons: dict[int, str] | None = None,
    num_rows: int | None = None,
) -> pa.RecordBatch:
    """Validate text columns; replace invalid UTF-8 with U+FFFD; add :data:`REJECT_COLUMN`.

    The fast path is one validation pass per string column. Only a column that fails
    validation is decoded value by value, which is rare and bounded by the batch.
    Reasons name ``unit`` and a number: ``numbers[i]`` when given (line numbers), else
    ``offset + i + 1`` (data rows).
    """
    reasons = dict(reasons or {})
    arrays = list(batch.columns)
    # A batch with no columns (JSON lines that were all broken or ``{}``) cannot carry a
    # row count itself; the caller passes it so those rows are not lost.
    n = batch.num_rows if num_rows is None else num_rows

    def label(i: int) -> str:
        return f"{unit} {numbers[i] if numbers is not None else offset + i + 1}"

    for j, field in enumerate(batch.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = arrays[j]
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            raw = col.view(pa.binary() if pa.types.is_string(field.type) else pa.large_binary())
            fixed: list[str | None] = []
            for i, v in enumerate(raw.to_pylist()):
                if v is None:
                    fixed.append(None)
                    continue
                try:
                    fixed.append(v.decode("utf-8"))
                except UnicodeDecodeError:
                    fixed.append(v.decode("utf-8", errors="replace"))
                    reasons.setdefault(
                        i,
                        f"{label(i)}: invalid UTF-8 in column '{field.name}' "
                        "(replaced with U+FFFD)",
                    )
            col = pa.array(fixed, type=field.type)
            arrays[j] = col
        too_big = pc.greater(pc.binary_length(col), MAX_FIELD_BYTES)
        if pc.any(too_big).as_py():
            for i in pc.indices_nonzero(pc.fill_null(too_big, False)).to_pylist():
                reasons.setdefault(
                    i,
                    f"{label(i)}: field in column '{field.name}' is larger than "
                    f"{MAX_FIELD_BYTES >> 20} MiB",
                )
    if reasons:
        reject = pa.array([reasons.get(i) for i in range(n)], pa.string())
    else:
        reject = pa.nulls(n, pa.string())
    return pa.RecordBatch.from_arrays(
        [*arrays, reject], schema=batch.schema.append(pa.field(REJECT_COLUMN, pa.string()))
    )


def text_safe(batch: pa.RecordBatch, respell: Respell) -> pa.RecordBatch:
    """Make a batch writable as text: dictionaries decoded, binary as base64.

    Every other column goes through the format's ``respell`` (JSON Lines spells dates and
    timestamps; CSV refuses nested types, naming the column).
    """
    arrays = []
    fields = []
    for col, field in zip(batch.columns, batch.schema, strict=True):
        typ = field.type
        if pa.types.is_dictionary(typ):
            col = col.cast(typ.value_type)
            typ = typ.value_type
        if (
            pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ)
            or pa.types.is_fixed_size_binary(typ)
            or pa.types.is_binary_view(typ)
        ):
            col = pa.array(
                [
                    None if v is None else base64.b64encode(v).decode("ascii")
                    for v in col.to_pylist()
                ],
                pa.string(),
            )
            typ = pa.string()
        else:
            col, typ = respell(field.name, col, typ)
        arrays.append(col)
        fields.append(pa.field(field.name, typ))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
