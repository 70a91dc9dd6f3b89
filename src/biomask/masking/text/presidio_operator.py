"""biomask's consistent tokens as a Presidio anonymizer operator.

Teams that already run Presidio (their own recognizers, their own ``AnalyzerEngine``) can
adopt biomask's tokens without adopting the ``text`` operator: register
:class:`BiomaskTokenOperator` with an ``AnonymizerEngine`` and pass a
:class:`BiomaskTokenizer` in the operator parameters. Every replaced entity then gets the
token that biomask's column operator of the linked domain gives the same value: a name in
Presidio's output equals the ``full_name`` column's pseudonym, an e-mail the ``email``
column's token, in every file and run that uses the same keyring.

>>> from presidio_anonymizer import AnonymizerEngine
>>> engine = AnonymizerEngine()
>>> engine.add_anonymizer(BiomaskTokenOperator)
>>> tokenizer = BiomaskTokenizer(policy, keyring)            # doctest: +SKIP
>>> engine.anonymize(text, results, operators=tokenizer.operators())  # doctest: +SKIP

The keyring stays inside the tokenizer object; Presidio only ever sees the operator's
name and the replacement strings.
"""

from __future__ import annotations

from typing import Any

from presidio_anonymizer.entities import InvalidParamError, OperatorConfig
from presidio_anonymizer.operators import Operator, OperatorType

from biomask.errors import PolicyError
from biomask.keys import Keyring
from biomask.masking.text.operator import LinkedDomain, _build_linked
from biomask.policies.models import Policy, TextOp

__all__ = ["OPERATOR_NAME", "BiomaskTokenOperator", "BiomaskTokenizer"]

#: The name Presidio knows the operator by (``OperatorConfig("biomask", ...)``).
OPERATOR_NAME = "biomask"


class BiomaskTokenizer:
    """Maps entity values to biomask tokens through the policy's column operators.

    Parameters
    ----------
    policy:
        The biomask policy: its column rules define the domains and their operators.
    keyring:
        The keyring the tokens are derived from.
    entities:
        Presidio entity type -> token domain. Default: the ``entities`` of the policy's
        ``text`` rules (all of them, first rule first).

    Raises
    ------
    PolicyError
        No entity is linked to a domain.
    """

    def __init__(
        self, policy: Policy, keyring: Keyring, entities: dict[str, str] | None = None
    ) -> None:
        if entities is None:
            entities = {}
            for tspec in policy.table_specs().values():
                for spec in tspec.columns.values():
                    if isinstance(spec, TextOp):
                        for etype, domain in spec.entities.items():
                            entities.setdefault(etype, domain)
        if not entities:
            raise PolicyError(
                "no entity type is linked to a token domain: pass entities={'PERSON': "
                "'person', ...} or add a text rule with entities to the policy"
            )
        self.entities = dict(entities)
        table = next(iter(policy.table_specs()))
        self._links: dict[str, LinkedDomain] = {}
        for etype, domain in self.entities.items():
            if domain not in self._links:
                self._links[domain] = _build_linked(policy, keyring, domain, etype, table)
        self._cache: dict[tuple[str, str], str] = {}

    def token(self, value: str, entity_type: str) -> str:
        """The token of ``value`` as the linked column operator gives it.

        A value of a type with no linked domain, or one the column operator refuses (an
        "e-mail" that is not an address), becomes ``<TYPE>``: never the value itself.
        """
        key = (entity_type, value)
        got = self._cache.get(key)
        if got is not None:
            return got
        domain = self.entities.get(entity_type)
        link = self._links.get(domain) if domain is not None else None
        if link is None:
            out = f"<{entity_type}>"
        elif link.mapper is not None:
            out = link.mapper.full_names([value])[0]
        else:
            tok = link.tokens([value])[0]
            out = tok if tok is not None else f"<{entity_type}>"
        if len(self._cache) < 100_000:
            self._cache[key] = out
        return out

    def operators(self) -> dict[str, OperatorConfig]:
        """Presidio ``operators=`` for every linked entity type, through this tokenizer."""
        return {
            etype: OperatorConfig(OPERATOR_NAME, {"tokenizer": self}) for etype in self.entities
        }


class BiomaskTokenOperator(Operator):
    """Presidio anonymizer operator ``"biomask"``: replace with the biomask token.

    Parameters (Presidio ``params``): ``tokenizer``, a :class:`BiomaskTokenizer`; Presidio
    adds ``entity_type`` itself.
    """

    def operate(self, text: str | None = None, params: dict[str, Any] | None = None) -> str:
        """The biomask token of ``text`` for its entity type."""
        params = params or {}
        tokenizer: BiomaskTokenizer = params["tokenizer"]
        return tokenizer.token(text or "", str(params.get("entity_type", "")))

    def validate(self, params: dict[str, Any] | None = None) -> None:
        """Refuse a call without a :class:`BiomaskTokenizer` (nothing to tokenize with)."""
        tokenizer = (params or {}).get("tokenizer")
        if not isinstance(tokenizer, BiomaskTokenizer):
            raise InvalidParamError(
                "the biomask operator needs params={'tokenizer': BiomaskTokenizer(policy, keyring)}"
            )

    def operator_name(self) -> str:
        """``"biomask"``."""
        return OPERATOR_NAME

    def operator_type(self) -> OperatorType:
        """An anonymizer (biomask's reversible tokens are reversed by ``biomask unmask``)."""
        return OperatorType.Anonymize
