"""What a run hands the Masker: declared first, read by the pipeline, then handed over.

Operators do no I/O. Some still need more than one batch: the ``text`` operator's lexicon
needs the values of the linked columns of every table (names, e-mails, phones) before the
first note is masked, and ``encrypt`` needs to know which key store holds the per-subject
data keys. So a run is a handshake in three steps:

1. the Masker declares what it needs (:meth:`Masker.needs <biomask.masking.Masker.needs>`
   gives a :class:`RunNeeds`: columns to pre-read per table, whether a key store is used);
2. whoever runs it (the pipeline for the command line and every engine, :func:`biomask.mask`
   for in-memory data) reads exactly that, through its connectors or from memory;
3. everything is handed over in one frozen :class:`RunServices`
   (:meth:`Masker.prepare <biomask.masking.Masker.prepare>`), the same object for every
   table of the run and, pickled, for every remote worker.

This module is masking's own: it knows nothing of connectors, which is what keeps the
dependency direction (``pipeline`` -> ``connectors`` and ``masking``) one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import pyarrow as pa

from biomask.masking.memo import Memo

__all__ = ["RunNeeds", "RunServices"]

V = TypeVar("V")


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class RunNeeds:
    """What a Masker needs from its run before the first batch (no data, only names).

    Attributes
    ----------
    preread:
        Table -> the columns of that table to read in full before masking (the text
        lexicon's known values). Tables of the whole policy, not only the Masker's own:
        a name in ``subjects.full_name`` is what finds that name in ``captures`` notes.
    keystore:
        Whether an operator keeps data keys in a key store (``encrypt``): only then does
        the run's key store URI matter.
    """

    preread: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    keystore: bool = False

    def __post_init__(self) -> None:
        cols = {t: tuple(dict.fromkeys(c)) for t, c in self.preread.items() if c}
        object.__setattr__(self, "preread", _frozen(cols))

    def __or__(self, other: RunNeeds) -> RunNeeds:
        """Both needs at once: the union of the columns, a key store if either uses one."""
        cols: dict[str, tuple[str, ...]] = {t: tuple(c) for t, c in self.preread.items()}
        for t, c in other.preread.items():
            cols[t] = tuple(dict.fromkeys((*cols.get(t, ()), *c)))
        return RunNeeds(cols, self.keystore or other.keystore)

    @classmethod
    def union(cls, needs: Iterable[RunNeeds]) -> RunNeeds:
        """The needs of a run's several Maskers (one per table) as one."""
        out = cls()
        for n in needs:
            out = out | n
        return out

    def __bool__(self) -> bool:
        return bool(self.preread) or self.keystore

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunNeeds, (dict(self.preread), self.keystore))


@dataclass(frozen=True)
class RunServices:
    """Everything a run hands its Maskers, read before the first batch; immutable.

    Built by the caller from :class:`RunNeeds` (the pipeline reads the columns through its
    connectors; :func:`biomask.mask` selects them from the table it was given), passed to
    :meth:`Masker.prepare <biomask.masking.Masker.prepare>` of every table, and pickled
    to remote workers with their Masker's spec, so each engine masks with the same inputs.

    Attributes
    ----------
    preread:
        Table -> its pre-read columns (only those some Masker declared).
    unreadable:
        Tables that needed a pre-read but whose source cannot be read twice (standard
        input): the lexicon lists them as skipped and finds their values in notes by NER
        and patterns only.
    keystore_uri:
        Where wrapped template data keys live; None means the keyring's default
        (``<keyring>.keystore.sqlite``).
    """

    preread: Mapping[str, pa.Table] = field(default_factory=dict)
    unreadable: frozenset[str] = frozenset()
    keystore_uri: str | None = None
    #: values derived from the above once per run and shared by every operator that asks
    #: (the lexicon: every ``text`` column of every table uses one); never pickled
    _shared: Memo = field(default_factory=Memo, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preread", _frozen(self.preread))
        object.__setattr__(self, "unreadable", frozenset(self.unreadable))

    @classmethod
    def from_tables(
        cls,
        tables: Mapping[str, pa.Table],
        needs: RunNeeds,
        *,
        keystore_uri: str | None = None,
    ) -> RunServices:
        """Services for data already in memory: the declared columns, selected.

        For :func:`biomask.mask` and tests, which hold whole tables; a declared table that
        is not given is simply absent (its values are then not known in advance), and a
        declared column a table lacks is left out, as the pipeline's pre-read does.
        """
        preread: dict[str, pa.Table] = {}
        for table, cols in needs.preread.items():
            tbl = tables.get(table)
            if tbl is None:
                continue
            present = [c for c in cols if c in tbl.column_names]
            if present:
                preread[table] = tbl.select(present)
        return cls(preread, keystore_uri=keystore_uri if needs.keystore else None)

    def shared(self, key: Any, build: Callable[[], V]) -> V:
        """The value built once per run under ``key`` (``build()`` runs the first time).

        Thread-safe; a remote worker's unpickled copy builds its own, from the same
        pre-read data, so every process derives the same value.
        """
        return self._shared.get(key, build)

    def __reduce__(self) -> tuple[Any, ...]:
        # what was derived stays in its process (the lexicon refuses to be pickled)
        return (RunServices, (dict(self.preread), self.unreadable, self.keystore_uri))
