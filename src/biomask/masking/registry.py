"""The operator registry: typed operators on whole Arrow columns.

Like presidio-anonymizer's operator registry, but an operator here takes a whole column
(``pa.Array``) and returns a whole column, and is bound once per policy rule so keys are
derived once per run, not once per value. Operators do no I/O.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import pyarrow as pa

from biomask.keys import Keyring
from biomask.masking.memo import Memo
from biomask.masking.services import RunNeeds, RunServices
from biomask.masking.shape import _native, utf8_buffers

if TYPE_CHECKING:
    from biomask.policies.models import Policy

__all__ = [
    "BatchMemo",
    "Binding",
    "Operator",
    "OperatorContext",
    "dictionary_encode",
    "expand",
    "get_operator",
    "is_string_type",
    "map_distinct",
    "operator_names",
    "register",
]

S = TypeVar("S")


@dataclass
class Binding:
    """Run-wide facts operators need when they are built (not per batch).

    Attributes
    ----------
    policy:
        The whole policy (operators look up entities and linked domains in it).
    keyring:
        The keyring; operators derive their keys from it once.
    table:
        The table the column belongs to.
    column:
        The column name.

    What operators need from the run itself (pre-read columns, the key store) is not
    here: they declare it (:meth:`Operator.needs`) and receive it later, in
    :meth:`Operator.prepare`, once the caller has read it.
    """

    policy: Policy
    keyring: Keyring
    table: str
    column: str


class BatchMemo(Memo):
    """Values computed once per batch and shared by the columns of that batch.

    Two ``date_shift`` columns bound to one entity need the same per-row offsets; the first
    column to ask computes them and the other waits for that result rather than repeating
    the work, also when the columns are masked on different threads.
    """


@dataclass
class OperatorContext:
    """Per-batch context of one column: the batch, entity tokens, and row failures.

    An operator that cannot mask some rows (an unparseable date, a wrong template length)
    calls :meth:`quarantine` for them and returns nulls there; the Masker moves those rows
    to the quarantine sink with the reason, so a row is never dropped silently nor passed
    through unmasked.
    """

    table: str
    column: str
    batch: pa.RecordBatch
    entity_tokens: dict[str, pa.Array]
    bad: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    #: schema metadata of the input (the unmasker reads original types from it)
    metadata: dict[str, str] = field(default_factory=dict)
    #: per-batch values shared between columns (see :class:`BatchMemo`)
    memo: BatchMemo = field(default_factory=BatchMemo)
    #: per entity, each row's subject key name: its token under the keyring's entity key
    #: (:attr:`biomask.keys.Keyring.entity_key_id`); the Masker fills it for the entities
    #: of :attr:`Operator.names_entity`, and it is the row's token while the token key is
    #: the entity key
    entity_names: dict[str, pa.Array] = field(default_factory=dict)

    def quarantine(self, rows: np.ndarray | pa.Array, reason: str) -> None:
        """Mark rows (a boolean mask) as unmaskable, with a reason naming the column."""
        mask = rows.to_numpy(zero_copy_only=False) if isinstance(rows, pa.Array) else rows
        mask = np.asarray(mask, dtype=bool)
        new = mask & ~self.bad
        for i in np.flatnonzero(new):
            self.reasons[int(i)] = f"{self.column}: {reason}"
        self.bad |= mask

    def count(self, name: str, n: int = 1) -> None:
        """Add to a per-run statistic (e.g. text detections)."""
        self.stats[name] = self.stats.get(name, 0) + n


class Operator(ABC, Generic[S]):
    """A masking operator bound to one policy rule.

    Subclasses set :attr:`name`, validate the column type in :meth:`check` and transform a
    whole column in :meth:`__call__`.
    """

    name: ClassVar[str]
    #: whether the output column is present (``drop`` says no)
    keeps_column: ClassVar[bool] = True
    #: whether columns of this operator may be masked on a worker thread beside other
    #: columns of the batch: true for operators that only compute on the column and their
    #: keys; false (the default) for those that touch I/O or models (key store, spaCy)
    parallel_safe: ClassVar[bool] = False
    #: whether the operator reads entity tokens (``ctx.entity_tokens``): such columns are
    #: masked after the entity columns; all others start with them
    needs_entities: ClassVar[bool] = False

    def __init__(self, spec: S, binding: Binding) -> None:
        self.spec = spec
        self.binding = binding

    @property
    def key_id(self) -> str | None:
        """Id of the master key this operator's keys come from (for lineage), if any."""
        return None

    @property
    def names_entity(self) -> str | None:
        """The entity whose subject key names (``ctx.entity_names``) this operator needs.

        Per-subject template keys are named by the subject's token under the keyring's
        pinned entity key, which the Masker computes (once per distinct value) only for the
        entities operators declare here.
        """
        return None

    def needs(self) -> RunNeeds:
        """What this operator needs from the run before the first batch (default: nothing).

        Declared, never fetched: an operator does no I/O, so what it needs beyond a batch
        (another table's columns, the key store's location) is read by the caller and
        handed to :meth:`prepare`.
        """
        return RunNeeds()

    def prepare(self, services: RunServices) -> None:
        """Take what :meth:`needs` declared, once, before the first batch (default: nothing).

        Not calling it is allowed: the operator then runs on its defaults (an empty
        lexicon, the keyring's default key store), as a Masker used on its own does.
        """
        return None

    def check(self, dtype: pa.DataType) -> str | None:
        """Return why this operator cannot take a column of ``dtype``, or None if it can."""
        return None

    def output_type(self, dtype: pa.DataType) -> pa.DataType:
        """Arrow type of the output column for an input of ``dtype``."""
        return dtype

    def metadata(self, dtype: pa.DataType) -> dict[str, str]:
        """Entries for the output's schema metadata (e.g. the type an encrypted column had)."""
        return {}

    @abstractmethod
    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        """Transform a whole column; rows that fail are quarantined through ``ctx``."""

    @property
    def reversible(self) -> bool:
        """Whether :meth:`reverse` gives the original values back (``biomask unmask``)."""
        return False

    def reverse(self, values: pa.Array, ctx: OperatorContext, key_id: str) -> pa.Array:
        """Undo :meth:`__call__` with the key ``key_id`` that masked the data.

        Only reversible operators (FF1 tokens, encrypted templates) implement this; the
        unmasker leaves every other column as it is.
        """
        raise NotImplementedError(f"{self.name} is not reversible")

    def reversed_type(self, dtype: pa.DataType, metadata: dict[str, str]) -> pa.DataType:
        """Arrow type of a reversed column (``metadata`` is the masked file's metadata)."""
        return dtype


_REGISTRY: dict[str, type[Operator[Any]]] = {}

T = TypeVar("T", bound=type[Operator[Any]])


def register(cls: T) -> T:
    """Class decorator: make an operator available to policies under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get_operator(name: str) -> type[Operator[Any]]:
    """The operator class for a policy ``op`` name."""
    from biomask.masking import operators, text  # noqa: F401  (register the built-ins)

    return _REGISTRY[name]


def operator_names() -> list[str]:
    """Names of all registered operators."""
    from biomask.masking import operators, text  # noqa: F401

    return sorted(_REGISTRY)


def is_string_type(dtype: pa.DataType) -> bool:
    """Whether ``dtype`` is a (large) UTF-8 string type."""
    return bool(pa.types.is_string(dtype) or pa.types.is_large_string(dtype))


#: key of the compiled helper's table of distinct values (it only spreads values over the
#: table): random, so that no input can be made to pile up in one slot
_DISTINCT_KEY = secrets.token_bytes(16)


def dictionary_encode(values: pa.Array) -> pa.DictionaryArray:
    """``values.dictionary_encode()``: the same dictionary, in the same order, and indices.

    Every token operator finds a batch's distinct values first, so that its crypto runs
    once per value. On a string column of ids, Arrow's hash kernel takes about twice as
    long as masking's compiled helper (one hash and at most a few comparisons per row, in
    a table sized once); other types, and builds without the helper, use Arrow's.
    """
    native = _native()
    if (
        native is None
        or not isinstance(values, pa.Array)
        or not is_string_type(values.type)
        or not len(values)
    ):
        return values.dictionary_encode()
    arr, offs, data = utf8_buffers(values)
    n = len(arr)
    nulls = arr.null_count > 0
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if nulls else None
    first = np.empty(n, dtype=np.int64)
    index = np.empty(n, dtype=np.int32)
    k = native.distinct(
        offs, data, _DISTINCT_KEY, b"" if valid is None else valid.view(np.uint8), first, index
    )
    indices = pa.array(index, mask=~valid) if valid is not None else pa.array(index)
    # every row distinct (a batch of ids): each is its own first occurrence, in order
    dictionary = arr if k == n else arr.take(pa.array(first[:k]))
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def expand(per_value: pa.Array, indices: pa.Array) -> pa.Array:
    """``per_value.take(indices)``: results per distinct value, back to one per row.

    ``indices`` are a dictionary encoding's (:func:`dictionary_encode`), which number the
    values in the order they first occur: when there are as many values as rows and no
    null, every row is its own value and the indices are 0, 1, 2... (a batch of ids), so
    the results are the rows already and the take would only copy them.
    """
    if len(per_value) == len(indices) and not indices.null_count:
        return per_value
    return per_value.take(indices)


def map_distinct(values: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply ``fn`` once per distinct non-null value and expand back to the column.

    This is what keeps per-value crypto at one call per distinct value: ``fn`` receives
    the dictionary of distinct values and returns one output per entry.
    """
    if len(values) == 0:
        return fn(values)
    enc = dictionary_encode(values)
    uniq = enc.dictionary
    out = fn(uniq)
    return expand(out, enc.indices)
