"""Masking: operators on whole Arrow columns and the Masker that applies a policy."""

from biomask.masking.masker import REASON_COLUMN, REJECT_COLUMN, MaskedBatch, Masker, Unmasker
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    get_operator,
    operator_names,
    register,
)
from biomask.masking.services import RunNeeds, RunServices

__all__ = [
    "REASON_COLUMN",
    "REJECT_COLUMN",
    "Binding",
    "MaskedBatch",
    "Masker",
    "Operator",
    "OperatorContext",
    "RunNeeds",
    "RunServices",
    "Unmasker",
    "get_operator",
    "operator_names",
    "register",
]
