"""The hash-chained audit log ``audit.jsonl``.

Each line is one entry, serialized as RFC 8785 canonical JSON::

    {"details": {...}, "kind": "mask", "mac": "<hex HMAC>", "prev": "<hex SHA-256>",
     "seq": 0, "time": "..."}

Two links per entry, for two readers:

``prev``
    the SHA-256 of the previous line's bytes (64 zeros for the first). Anyone can check it;
    with the signed manifest's head (hash of the last line) and count, an auditor holding
    only the *public* key detects an edited, inserted, deleted, reordered or cut entry.
``mac``
    HMAC-SHA256 of the entry without its ``mac``, under a key derived from the keyring's
    signing key (:meth:`~biomask.keys.Keyring.chain_key`). Whoever lacks the keyring
    cannot write an entry that a writer (every ``biomask`` run checks the whole log before
    appending) or ``biomask audit verify --keyring`` accepts, even with the links recomputed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomask.errors import LineageError, VerificationError
from biomask.keys.handles import KeyHandle
from biomask.keys.primitives import mac_hex
from biomask.lineage._util import canonical, now_iso, open_private, sha256_hex

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "ChainState",
    "append_entry",
    "prefix_head",
    "read_chain",
    "replay_chain",
]

AUDIT_FILE = "audit.jsonl"
GENESIS = "0" * 64
"""``prev`` of the first entry."""

Details = dict[str, str | int]


@dataclass(frozen=True)
class ChainState:
    """Where the chain stands: number of entries and hash of the last one."""

    count: int
    head: str


def _check_details(details: dict[str, Any]) -> Details:
    out: Details = {}
    for k, v in details.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, str | int):
            raise LineageError(
                f"audit detail {k!r} must be a string or an integer (got {type(v).__name__})"
            )
        out[k] = v
    return out


#: path -> (file identity, state, entries) of the last chain this process verified or wrote.
#: A run reads the chain four times (before START, at each audit entry it appends, and for
#: the dossier); checking every line each time made a run's cost grow four times as fast as
#: the log. The cache holds only while the file is exactly as this process left it: same
#: device, inode, size, modification and status-change times. Any write, or any attempt to
#: put a modification time back, moves the status-change time, which no user can set, so
#: another writer's change is always checked again. ``biomask audit verify`` never uses it.
_VERIFIED: dict[Path, tuple[tuple[int, ...], ChainState, list[dict[str, Any]]]] = {}


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_FIELDS = {"seq", "prev", "time", "kind", "details", "mac"}


def _entry_mac(key: KeyHandle, entry: dict[str, Any]) -> str:
    return mac_hex(key, canonical({k: v for k, v in entry.items() if k != "mac"}))


def replay_chain(
    directory: Path, *, reuse: bool = False, key: KeyHandle | None = None
) -> tuple[ChainState, list[dict[str, Any]]]:
    """Re-read ``audit.jsonl`` and check every link; return the state and the entries.

    With ``key`` (the keyring's :meth:`~biomask.keys.Keyring.chain_key`) every entry's MAC
    is checked too; without it only the public ``prev`` links are. With ``reuse`` (and a
    key), a chain this process already checked (or extended) and that no one changed since
    is not checked again (see :data:`_VERIFIED`); writers use that, the verifier does not.

    Raises
    ------
    VerificationError
        Naming the first line that is not canonical, out of sequence or whose ``prev``
        does not match the previous line (an edited, inserted, deleted or reordered entry).
    """
    path = directory / AUDIT_FILE
    if not path.exists():
        return ChainState(0, GENESIS), []
    ident = _identity(path)
    known = _VERIFIED.get(path.resolve()) if reuse and key is not None else None
    if known is not None and ident is not None and known[0] == ident:
        return known[1], [dict(e) for e in known[2]]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"cannot read {path}: {exc.strerror}") from None
    if raw and not raw.endswith(b"\n"):
        raise VerificationError(f"{AUDIT_FILE}: last line is incomplete (file cut off)")
    prev = GENESIS
    entries: list[dict[str, Any]] = []
    for n, line in enumerate(raw.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise VerificationError(f"{AUDIT_FILE} line {n}: not valid JSON") from None
        if isinstance(entry, dict) and set(entry) == _FIELDS - {"mac"}:
            raise VerificationError(
                f"{AUDIT_FILE} line {n}: an unkeyed entry (lineage format 1, written by an "
                "older biomask): verify it with that version; start a new lineage directory"
            )
        if not isinstance(entry, dict) or set(entry) != _FIELDS:
            raise VerificationError(f"{AUDIT_FILE} line {n}: not an audit entry")
        if canonical(entry) != line:
            raise VerificationError(
                f"{AUDIT_FILE} line {n}: not in canonical form (the entry was edited)"
            )
        if entry["seq"] != n - 1:
            raise VerificationError(
                f"{AUDIT_FILE} line {n}: sequence number {entry['seq']} where {n - 1} was "
                "expected (an entry was inserted, deleted or reordered)"
            )
        if entry["prev"] != prev:
            raise VerificationError(
                f"{AUDIT_FILE} line {n}: 'prev' does not match the hash of line {n - 1} "
                "(an entry was edited, inserted, deleted or reordered)"
            )
        if key is not None and entry["mac"] != _entry_mac(key, entry):
            raise VerificationError(
                f"{AUDIT_FILE} line {n}: its MAC does not match (the entry was written or "
                "rewritten without this keyring)"
            )
        prev = sha256_hex(line)
        entries.append(entry)
    state = ChainState(len(entries), prev)
    if key is not None and ident is not None and ident == _identity(path):
        _VERIFIED[path.resolve()] = (ident, state, [dict(e) for e in entries])
    return state, entries


def prefix_head(directory: Path, count: int) -> str | None:
    """Hash of line ``count`` (the head after ``count`` entries), or None if shorter.

    What a receipt is checked against: the log a receipt saw must be a prefix of the current one.
    """
    if count == 0:
        return GENESIS
    try:
        with (directory / AUDIT_FILE).open("rb") as fh:
            for n, line in enumerate(fh, start=1):
                if n == count:
                    return sha256_hex(line.rstrip(b"\n"))
    except OSError:
        return None
    return None


def read_chain(directory: Path, key: KeyHandle) -> ChainState:
    """The current chain state, links and MACs checked (a writer never extends a broken chain).

    Raises
    ------
    LineageError
        If the existing log does not replay: appending to it would bless the tampering.
    """
    try:
        state, _ = replay_chain(directory, reuse=True, key=key)
    except VerificationError as exc:
        raise LineageError(f"refusing to extend a broken audit log: {exc}") from None
    return state


def append_entry(directory: Path, kind: str, details: dict[str, Any], key: KeyHandle) -> ChainState:
    """Append one keyed entry to the chain (fsync'd) and return the new state.

    Parameters
    ----------
    kind:
        ``mask``, ``access`` (unmask), ``erase``, ``key_rotation``, ``rekey``...
    details:
        Flat strings and integers only: ids, counts, hashes; never a data value or key.
    """
    state = read_chain(directory, key)
    path = directory / AUDIT_FILE
    known = _VERIFIED.get(path.resolve()) if path.exists() else None
    before = _identity(path)
    entry = {
        "seq": state.count,
        "prev": state.head,
        "time": now_iso(),
        "kind": str(kind),
        "details": _check_details(details),
    }
    entry["mac"] = _entry_mac(key, entry)
    line = canonical(entry)
    try:
        with open_private(path, append=True) as fh:
            fh.write(line + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise LineageError(f"cannot append to {path}: {exc.strerror}") from None
    new = ChainState(state.count + 1, sha256_hex(line))
    after = _identity(path)
    before_size = before[2] if before is not None else 0
    checked = state.count == 0 or (known is not None and known[0] == before)
    if checked and after is not None and after[2] == before_size + len(line) + 1:
        # what this process verified, plus the one line it wrote itself
        old_entries = known[2] if known is not None else []
        _VERIFIED[path.resolve()] = (after, new, [*old_entries, dict(entry)])
    else:
        _VERIFIED.pop(path.resolve(), None)
    return new
