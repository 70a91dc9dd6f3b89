"""Subject key names: an entity's token under the keyring's pinned entity key.

A per-subject template key (``encrypt`` with ``per_entity_key: true``) is named
``e:<entity>:<name>`` (:func:`biomask.keys.envelope.subject_key_id`), where ``<name>`` is
the subject's id masked by the entity column's own rule, but under the keyring's entity
key (:attr:`biomask.keys.Keyring.entity_key_id`), which no rotation moves. While the
token key is the entity key (every keyring until its first ``keys rotate-tokens``) the
name is the row's token and costs nothing; afterwards it is computed here, once per
distinct value, with the same operator class and rule as the column, bound to a view of
the keyring whose token key is the entity key.

``erase`` goes the other way: a token made under some token key is turned back into the
subject's id (tokens are permutations: :meth:`Tokenize.invert`) and masked again under
the entity key. A token is never matched against key names by trying them: a subject's
new token can equal another subject's old one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biomask.errors import BiomaskError
from biomask.keys import Keyring
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    dictionary_encode,
    expand,
    get_operator,
)
from biomask.policies.models import Policy

__all__ = ["SubjectNames", "as_binary"]


def as_binary(values: pa.Array) -> pa.Array:
    """Tokens or row keys (string, integer or dictionary) as binary: the form key names
    and associated data are made of."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not pa.types.is_binary(values.type):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = values.cast(pa.string())
        values = values.cast(pa.binary())
    return values


class SubjectNames:
    """Compute subject key names for the entities of one policy and keyring.

    Parameters
    ----------
    policy:
        The policy whose entity rules give the tokens.
    keyring:
        The keyring (its entity key names the subjects).
    table:
        The table whose rule for the entity's column is used; by default the first table
        that has that column (one entity's column is masked alike in every table: its
        tokens join).
    """

    def __init__(self, policy: Policy, keyring: Keyring, table: str | None = None) -> None:
        self.policy = policy
        self.keyring = keyring
        self.table = table
        self._ops: dict[tuple[str, str], Operator[Any]] = {}

    def _rule(self, entity: str) -> tuple[str, str]:
        spec = self.policy.entities.get(entity)
        if spec is None:
            declared = ", ".join(self.policy.entities) or "none"
            raise BiomaskError(
                f"entity '{entity}' is not declared in policy "
                f"{self.policy.source or self.policy.dataset} (entities: {declared})"
            )
        tables = self.policy.table_specs()
        order = [self.table] if self.table is not None else list(tables)
        for t in order:
            if spec.column in tables[t].columns:
                return t, spec.column
        raise BiomaskError(
            f"no table of policy {self.policy.source or self.policy.dataset} has entity "
            f"'{entity}''s column '{spec.column}'"
        )

    def _op(self, entity: str, key_id: str) -> Operator[Any]:
        """The entity column's operator with ``key_id`` as its token key (built once)."""
        op = self._ops.get((entity, key_id))
        if op is None:
            table, column = self._rule(entity)
            rule = self.policy.table_specs()[table].columns[column]
            view = self.keyring.tokens_under(key_id)
            op = get_operator(rule.op)(rule, Binding(self.policy, view, table, column))
            self._ops[(entity, key_id)] = op
        return op

    def from_values(self, entity: str, values: pa.Array) -> pa.Array:
        """Per row, the name of the subject whose raw id is in ``values`` (null if none).

        Runs the column's rule once per distinct value; a value the rule cannot mask
        (quarantined by the column's own operator too) gets null.
        """
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if pa.types.is_large_string(values.type):  # operators work on 32-bit offsets
            values = values.cast(pa.string())
        op = self._op(entity, self.keyring.entity_key_id)
        enc = dictionary_encode(values)
        uniq = enc.dictionary
        ctx = OperatorContext(
            op.binding.table,
            op.binding.column,
            pa.RecordBatch.from_arrays([uniq], [op.binding.column]),
            {},
            np.zeros(len(uniq), dtype=bool),
        )
        tokens = op(uniq, ctx)
        if ctx.bad.any():  # values the rule refused: no name, never a partial one
            tokens = pc.if_else(pa.array(ctx.bad), pa.scalar(None, tokens.type), tokens)
        return expand(tokens, enc.indices)

    def from_tokens(self, entity: str, tokens: pa.Array, key_id: str) -> pa.Array:
        """Per row, the name of the subject whose token under ``key_id`` is in ``tokens``.

        Raises
        ------
        BiomaskError
            The entity's rule does not make invertible tokens (``hash``, ``email``,
            ``phone``): its tokens cannot be turned back into ids.
        """
        op = self._op(entity, key_id)
        invert = getattr(op, "invert", None)
        if invert is None:
            raise BiomaskError(
                f"entity '{entity}''s column is masked with '{op.name}', whose tokens cannot be "
                "turned back into ids: name the subject by its id (--subject-id) instead"
            )
        enc = dictionary_encode(tokens)
        raw = invert(enc.dictionary)
        return self.from_values(entity, expand(raw, enc.indices))
