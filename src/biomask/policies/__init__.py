"""Policies: the policy file's models, YAML loading with line numbers, JSON Schema export."""

from biomask.policies.loader import load_policy, parse_policy, policy_from_dict, policy_json_schema
from biomask.policies.models import OpSpec, Policy, TableSpec

__all__ = [
    "OpSpec",
    "Policy",
    "TableSpec",
    "load_policy",
    "parse_policy",
    "policy_from_dict",
    "policy_json_schema",
]
