"""Load a policy from YAML with errors that name the file, line and field.

PyYAML's composer keeps a start mark on every node; pydantic errors carry a ``loc`` path.
Walking the node tree along that path gives the line of the offending field, so a user
sees ``policy.yaml:14: columns.dob.op: unknown operator 'shift'`` instead of a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from biomask.errors import PolicyError
from biomask.policies.models import (
    OPERATOR_NAMES,
    DateShiftOp,
    EncryptOp,
    HashOp,
    Policy,
    TextOp,
)

__all__ = [
    "MIN_IDENTITY_HASH",
    "load_policy",
    "parse_policy",
    "policy_from_dict",
    "policy_json_schema",
]

#: hex characters a hash needs where it stands for an entity (128 bits)
MIN_IDENTITY_HASH = 32


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file ({exc.strerror})", path=str(p)) from None
    return parse_policy(raw, source=str(p))


def parse_policy(raw: bytes | str, *, source: str = "<policy>") -> Policy:
    """Validate policy YAML text; ``source`` names it in errors."""
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy file is not valid UTF-8", path=source) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyError(f"invalid YAML: {problem}", path=source, line=line) from None
    if node is None:
        raise PolicyError("policy file is empty", path=source)
    lines: dict[tuple[str, ...], int] = {}
    _index_lines(node, (), lines, source)
    try:
        doc = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:  # pragma: no cover - compose already parsed it
        raise PolicyError(f"invalid YAML: {exc}", path=source) from None
    if not isinstance(doc, dict):
        raise PolicyError(
            "a policy must be a mapping (version, dataset, columns...)", path=source, line=1
        )
    policy = _validate(doc, source, lines)
    policy._sha256 = hashlib.sha256(data).hexdigest()
    return policy


def policy_from_dict(doc: dict[str, Any], *, source: str = "<policy>") -> Policy:
    """Validate a policy given as a Python mapping (library use)."""
    policy = _validate(doc, source, {})
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    policy._sha256 = hashlib.sha256(canonical.encode()).hexdigest()
    return policy


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema of the policy file (for editors and CI checks)."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "biomask policy"
    return schema


# -- internals --------------------------------------------------------------------------


def _index_lines(
    node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int], source: str
) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise PolicyError(
                    f"duplicate key '{key}'",
                    path=source,
                    line=key_node.start_mark.line + 1,
                    field=".".join((*path, key)),
                )
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), out, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, str(i)), out, source)


def _line(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int | None:
    # pydantic puts union tags (e.g. 'date_shift') into loc; they are not YAML keys, so
    # skip path elements that do not exist and keep the deepest known line.
    best: int | None = lines.get(())
    cur: tuple[str, ...] = ()
    for part in loc:
        nxt = (*cur, part)
        if nxt in lines:
            cur = nxt
            best = lines[nxt]
    return best


def _validate(doc: dict[str, Any], source: str, lines: dict[tuple[str, ...], int]) -> Policy:
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        raise PolicyError(
            _message(err, doc, loc), path=source, line=_line(lines, loc), field=_clean(loc)
        ) from None
    policy._source = source
    policy._lines = lines
    _cross_check(policy, source, lines)
    return policy


def _clean(loc: tuple[str, ...]) -> str:
    # pydantic puts the union tag after a column name (columns.dob.date_shift.max_days);
    # users never wrote it, so leave it out of the field path.
    out = [
        part
        for i, part in enumerate(loc)
        if not (i >= 2 and loc[i - 2] == "columns" and part in OPERATOR_NAMES)
    ]
    return ".".join(out) or "policy"


def _message(err: Any, doc: dict[str, Any], loc: tuple[str, ...]) -> str:
    kind = err["type"]
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag", "?")
        return f"unknown operator '{tag}' (known: {', '.join(OPERATOR_NAMES)})"
    if kind == "union_tag_not_found":
        return f"missing 'op' (one of: {', '.join(OPERATOR_NAMES)})"
    if kind == "extra_forbidden":
        return f"unknown field '{loc[-1]}'"
    if kind == "missing":
        return f"missing required field '{loc[-1]}'"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"invalid value; expected {expected}"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def _cross_check(policy: Policy, source: str, lines: dict[tuple[str, ...], int]) -> None:
    """References between rules: entities, domains, one operator kind per domain."""
    domains: dict[str, tuple[str, tuple[str, ...]]] = {}
    tables = policy.table_specs()
    multi = policy.is_multi_table
    rules = []
    for tname, spec in tables.items():
        for cname, op in spec.columns.items():
            base = ("tables", tname, "columns", cname) if multi else ("columns", cname)
            rules.append((base, op))

    def fail(msg: str, loc: tuple[str, ...]) -> PolicyError:
        return PolicyError(msg, path=source, line=_line(lines, loc), field=".".join(loc))

    for base, op in rules:
        dom = op.domain_name
        if dom is None:
            continue
        kind = op.op
        signature = kind + ("+reversible" if getattr(op, "reversible", False) else "")
        if dom in domains and domains[dom][0] != signature:
            other = ".".join(domains[dom][1])
            raise fail(
                f"domain '{dom}' is used by '{domains[dom][0]}' at {other} and by "
                f"'{signature}' here; one domain needs one kind of token",
                (*base, "domain"),
            )
        domains.setdefault(dom, (signature, base))
    for base, op in rules:
        if isinstance(op, EncryptOp) and op.row_key is not None:
            cols = tables[base[1]].columns if multi else tables[policy.dataset].columns
            key_rule = cols.get(op.row_key)
            if key_rule is None or op.row_key == base[-1]:
                raise fail(
                    f"row_key '{op.row_key}' is not another column of this table's rules "
                    f"(columns: {', '.join(c for c in cols if c != base[-1])})",
                    (*base, "row_key"),
                )
            if key_rule.op not in ("tokenize", "hash", "keep"):
                raise fail(
                    f"row_key column '{op.row_key}' uses '{key_rule.op}': the row key must "
                    "survive masking as a stable value (tokenize, hash or keep)",
                    (*base, "row_key"),
                )
    for base, op in rules:
        entity = op.entity if isinstance(op, DateShiftOp | EncryptOp | TextOp) else None
        if entity is not None and entity not in policy.entities:
            known = ", ".join(policy.entities) or "none declared"
            raise fail(f"unknown entity '{entity}' (entities: {known})", (*base, "entity"))
        if isinstance(op, TextOp):
            for etype, dom in op.entities.items():
                if dom not in domains:
                    raise fail(
                        f"unknown domain '{dom}' for {etype}: no column rule declares it "
                        f"(domains: {', '.join(sorted(domains)) or 'none'})",
                        (*base, "entities", etype),
                    )
    # one offset range per entity: a rule may repeat the entity's range, never change it
    ranges: dict[str, tuple[int, tuple[str, ...]]] = {}
    for base, op in rules:
        if not isinstance(op, DateShiftOp) or op.max_days is None:
            continue
        declared = policy.entities[op.entity].max_days
        if declared is not None and op.max_days != declared:
            raise fail(
                f"max_days {op.max_days} differs from entity '{op.entity}''s range "
                f"(entities.{op.entity}.max_days: {declared}); every date of an entity moves "
                "by one offset: remove max_days here or change the entity's",
                (*base, "max_days"),
            )
        first = ranges.setdefault(op.entity, (op.max_days, base))
        if first[0] != op.max_days:
            raise fail(
                f"max_days {op.max_days} differs from {first[0]} at {'.'.join(first[1])}; "
                f"every date of entity '{op.entity}' moves by one offset: set "
                f"entities.{op.entity}.max_days once and remove it from the rules",
                (*base, "max_days"),
            )
    # Identity domains: an entity's column, or a domain a text rule links to. Their tokens
    # stand for one person each, so a hash there must be long enough never to merge two
    # (128 bits: a collision among 2**40 values has a chance below 2**-47).
    identity: dict[str, str] = {}
    for base, op in rules:
        if isinstance(op, TextOp):
            for etype, dom in op.entities.items():
                identity.setdefault(dom, f"the text rule at {'.'.join(base)} links {etype} to it")
    entity_cols = {ent.column: ename for ename, ent in policy.entities.items()}
    for base, op in rules:
        if not isinstance(op, HashOp) or op.length >= MIN_IDENTITY_HASH:
            continue
        why = identity.get(op.domain)
        if why is None and base[-1] in entity_cols:
            why = f"it keys entity '{entity_cols[base[-1]]}'"
        if why is not None:
            raise fail(
                f"hash of length {op.length} ({op.length * 4} bits) may merge two values of "
                f"domain '{op.domain}', and {why}: use length {MIN_IDENTITY_HASH} or more "
                "(128 bits), or tokenize",
                (*base, "length"),
            )
    for ename, ent in policy.entities.items():
        found = [t for t, spec in tables.items() if ent.column in spec.columns]
        if not found:
            raise fail(
                f"entity '{ename}' is keyed by column '{ent.column}', which no table lists",
                ("entities", ename, "column"),
            )
        for t in found:
            op = tables[t].columns[ent.column]
            if op.op in ("drop", "redact", "encrypt", "text", "generalize"):
                raise fail(
                    f"entity column '{ent.column}' uses '{op.op}', which destroys the key that "
                    "date shifts and encryption bind to; tokenize or hash it",
                    ("entities", ename, "column"),
                )
