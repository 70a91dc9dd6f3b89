"""Envelope encryption of templates: the data-key ids a key store holds.

Every data key (DEK) in a key store is named by an id, which each ciphertext header
carries: ``run:<random>`` for the key one run shares over a column, ``e:<entity>:<name>``
for one subject's key (``per_entity_key: true``). The subject's ``<name>`` is the
subject's token under the keyring's pinned entity key
(:attr:`biomask.keys.Keyring.entity_key_id`), so it survives every rotation and
``erase`` removes every key the subject ever had. This module is the one place that
writes and reads that format.
"""

from __future__ import annotations

__all__ = ["is_subject_key_id", "subject_key_id", "subject_key_prefix"]


def subject_key_prefix(entity: str) -> str:
    """``e:<entity>:``: what every subject key id of ``entity`` starts with."""
    return f"e:{entity}:"


def subject_key_id(entity: str, name: str) -> str:
    """The id of the data key of the subject of ``entity`` named ``name``."""
    return subject_key_prefix(entity) + name


def is_subject_key_id(dek_id: str) -> bool:
    """Whether ``dek_id`` names one subject's key (and not a run's shared key)."""
    return dek_id.startswith("e:")
