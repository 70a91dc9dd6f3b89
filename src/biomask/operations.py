"""Key and template workflows that are not mask runs: rotate, rotate tokens, rekey, erase.

Each function does the whole workflow (open the key store, check the lineage directory
before changing anything, change it, record a signed event) and returns a typed result;
the CLI only parses arguments and prints these results. ``rekey --upgrade`` rewrites
data, so it is a run of the pipeline (:func:`biomask.pipeline.run_upgrade_templates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from biomask.errors import BiomaskError, KeyringError
from biomask.keys import Keyring
from biomask.keys.envelope import erase_subject_key, rewrap
from biomask.keys.keystore import default_keystore_uri, open_keystore
from biomask.lineage import record_event
from biomask.lineage.head import check_head
from biomask.masking.entities import SubjectNames
from biomask.policies.models import Policy

__all__ = [
    "EraseResult",
    "RekeyResult",
    "RotateResult",
    "check_lineage",
    "default_lineage",
    "erase_subject",
    "rekey",
    "rotate_keys",
    "rotate_token_keys",
    "subject_key_name",
]


def default_lineage(keyring: Keyring) -> Path:
    """Where key events go without ``--lineage``: ``<keyring>.lineage`` beside the file."""
    if keyring.path is None:
        raise BiomaskError("an ephemeral keyring has no file: pass a lineage directory")
    return keyring.path.with_name(keyring.path.name + ".lineage")


def check_lineage(directory: Path, keyring: Keyring) -> None:
    """Refuse a key operation whose lineage directory would refuse its event afterwards."""
    if directory.is_dir():
        check_head(directory, keyring)


@dataclass(frozen=True)
class RotateResult:
    """What a rotation did (``keys rotate`` or ``keys rotate-tokens``).

    Attributes
    ----------
    old_key_id, new_key_id:
        The primary key before and after (``keys rotate``), or the token key before and
        after (``keys rotate-tokens``, where the new key is the primary too).
    token_key_id:
        The key tokens derive from after the rotation.
    receipt:
        The lineage receipt after the event.
    """

    old_key_id: str
    new_key_id: str
    token_key_id: str
    receipt: str


def rotate_keys(keyring: Keyring, *, lineage_dir: Path | None = None) -> RotateResult:
    """Add a new primary (encryption) key and record it; no token changes.

    The lineage directory is checked first: a tampered one refuses the rotation before it
    happens (it would refuse the event afterwards).
    """
    old = keyring.primary_key_id
    target = lineage_dir or default_lineage(keyring)
    check_lineage(target, keyring)
    new = keyring.rotate()
    receipt = record_event(
        target,
        keyring,
        "key.rotate",
        {"keyring_id": keyring.keyring_id, "old_key_id": old, "new_key_id": new},
    )
    return RotateResult(old, new, keyring.token_key_id, str(receipt))


def rotate_token_keys(keyring: Keyring, *, lineage_dir: Path | None = None) -> RotateResult:
    """New token keys and record it: every token, pseudonym and date offset changes.

    Subject key names do not (they derive from the pinned entity key), so ``erase`` still
    reaches one key per subject.
    """
    old = keyring.token_key_id
    target = lineage_dir or default_lineage(keyring)
    check_lineage(target, keyring)
    new = keyring.rotate_tokens()
    receipt = record_event(
        target,
        keyring,
        "key.rotate_tokens",
        {"keyring_id": keyring.keyring_id, "old_token_key_id": old, "new_token_key_id": new},
    )
    return RotateResult(old, new, keyring.token_key_id, str(receipt))


@dataclass(frozen=True)
class RekeyResult:
    """What ``rekey`` did: how many template keys it re-wrapped, under which key."""

    rewrapped: int
    key_id: str
    receipt: str


def rekey(
    keyring: Keyring, *, keystore: str | None = None, lineage_dir: Path | None = None
) -> RekeyResult:
    """Re-wrap every stored template key under the primary key (templates untouched)."""
    store = open_keystore(
        keystore or default_keystore_uri(keyring.path, keyring.keyring_id), create=False
    )
    target = lineage_dir or default_lineage(keyring)
    check_lineage(target, keyring)
    n = rewrap(store, keyring)
    receipt = record_event(
        target,
        keyring,
        "key.rekey",
        {"keyring_id": keyring.keyring_id, "new_key_id": keyring.primary_key_id, "rewrapped": n},
    )
    return RekeyResult(n, keyring.primary_key_id, str(receipt))


@dataclass(frozen=True)
class EraseResult:
    """What ``erase`` did.

    Attributes
    ----------
    entity:
        The entity name.
    subject:
        How the subject was named in the request: the token, or (for an id) the subject's
        key name; never the raw id.
    dek_id:
        The data key id erased (``e:<entity>:<name>``).
    erased:
        True when the key was deleted now; False when it had already been erased.
    keystore:
        The key store's URI.
    receipt:
        The lineage receipt after the event (None when nothing was erased now).
    """

    entity: str
    subject: str
    dek_id: str
    erased: bool
    keystore: str
    receipt: str | None


def _one(values: pa.Array, what: str) -> str:
    got = values[0].as_py()
    if got is None:
        raise BiomaskError(what)
    return str(got)


def subject_key_name(
    keyring: Keyring,
    *,
    entity: str = "subject",
    token: str | int | None = None,
    token_key: str | None = None,
    subject_id: str | int | None = None,
    policy: Policy | None = None,
) -> str:
    """The name of a subject's template key, from a token or from the subject's id.

    A token made under the entity key is the name itself. A token made under another
    token key (every output after ``keys rotate-tokens``) is turned back into the
    subject's id with that key and masked again under the entity key, which needs the
    policy's rule for the entity. Names are never matched by trying tokens against the
    key store: a subject's new token can be another subject's old one.

    Parameters
    ----------
    token:
        The subject's token, as an output holds it (``int`` for an integer id column).
    token_key:
        The token key that made ``token`` (default: the keyring's current token key; an
        older output's is in its ``biomask.token_key_id`` metadata).
    subject_id:
        The subject's real id instead of a token (needs ``policy``).
    policy:
        The policy that masked the data (its entity rule).

    Raises
    ------
    BiomaskError
        Neither or both of ``token`` and ``subject_id``; no policy where one is needed; a
        token the rule cannot invert, or an id it cannot mask.
    KeyringError
        ``token_key`` is not a key of this keyring.
    """
    if (token is None) == (subject_id is None):
        raise BiomaskError("name the subject by its token (--subject) or by its id (--subject-id)")
    if subject_id is not None:
        if policy is None:
            raise BiomaskError(
                "erasing by subject id needs the policy that masked the data (--policy)"
            )
        names = SubjectNames(policy, keyring).from_values(entity, pa.array([subject_id]))
        return _one(names, f"entity '{entity}''s rule gives no token for that id")
    assert token is not None
    kid = keyring.token_key_id if token_key is None else token_key
    if kid not in keyring.key_ids:
        raise KeyringError(f"key id {kid} is not in keyring {keyring.keyring_id}")
    if kid == keyring.entity_key_id:
        return str(token)
    if policy is None:
        raise BiomaskError(
            f"token key {kid} is not the entity key {keyring.entity_key_id} that names subject "
            "keys (the token keys were rotated): pass --policy, so erase can turn the token "
            "back into the subject's id (it never guesses by trying key names)"
        )
    names = SubjectNames(policy, keyring).from_tokens(entity, pa.array([token]), kid)
    return _one(
        names,
        f"{token} is not a token of entity '{entity}''s rule under token key {kid}: it "
        "cannot be turned back into an id (check --token-key and --policy)",
    )


def erase_subject(
    keyring: Keyring,
    *,
    entity: str = "subject",
    token: str | int | None = None,
    token_key: str | None = None,
    subject_id: str | int | None = None,
    policy: Policy | None = None,
    keystore: str | None = None,
    lineage_dir: Path | None = None,
) -> EraseResult:
    """Destroy one subject's template key: every copy of their templates becomes unreadable.

    The subject is named as :func:`subject_key_name` says. The lineage directory is checked
    before the key store changes, and the erasure is recorded there as a signed event
    (with the token or key name, never a raw id).

    Raises
    ------
    BiomaskError
        No key for that subject in the store (and no record of erasing it).
    KeyringError
        A missing or damaged key store, a busy SQLite store (nothing erased).
    """
    name = subject_key_name(
        keyring,
        entity=entity,
        token=token,
        token_key=token_key,
        subject_id=subject_id,
        policy=policy,
    )
    said = str(token) if token is not None else name
    uri = keystore or default_keystore_uri(keyring.path, keyring.keyring_id)
    store = open_keystore(uri, create=False)
    target = lineage_dir or default_lineage(keyring)
    check_lineage(target, keyring)
    dek_id, outcome = erase_subject_key(store, entity, name)
    if outcome == "already erased":
        return EraseResult(entity, said, dek_id, False, store.uri, None)
    if outcome == "missing":
        raise BiomaskError(f"no template key for {entity} token {said} in {store.uri}")
    receipt = record_event(
        target,
        keyring,
        "erase",
        {"entity": entity, "subject_token": said, "keystore": store.uri, "keys_deleted": 1},
    )
    return EraseResult(entity, said, dek_id, True, store.uri, str(receipt))
