"""The hash-chained audit log ``audit.jsonl``.

Each line is one entry, serialized as RFC 8785 canonical JSON::

    {"details": {...}, "kind": "mask", "prev": "<hex SHA-256>", "seq": 0, "time": "..."}

``prev`` is the SHA-256 of the previous line's canonical bytes (64 zeros for the first), so
editing, inserting, deleting or reordering any entry breaks the chain at the next entry.
The manifest carries the hash of the last entry (the *head*) and the entry count, signed:
that catches a cut-off tail or an edit of the last entry, which the chain alone cannot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomask.errors import LineageError, VerificationError
from biomask.lineage._util import canonical, now_iso, sha256_hex

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "ChainState",
    "append_entry",
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


def replay_chain(
    directory: Path, *, reuse: bool = False
) -> tuple[ChainState, list[dict[str, Any]]]:
    """Re-read ``audit.jsonl`` and check every link; return the state and the entries.

    With ``reuse``, a chain this process already checked (or extended) and that no one
    changed since is not checked again (see :data:`_VERIFIED`); writers use that, the
    verifier does not.

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
    known = _VERIFIED.get(path.resolve()) if reuse else None
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
        if not isinstance(entry, dict) or set(entry) != {"seq", "prev", "time", "kind", "details"}:
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
        prev = sha256_hex(line)
        entries.append(entry)
    state = ChainState(len(entries), prev)
    if ident is not None and ident == _identity(path):  # unchanged while it was read
        _VERIFIED[path.resolve()] = (ident, state, [dict(e) for e in entries])
    return state, entries


def read_chain(directory: Path) -> ChainState:
    """The current chain state, checked (a writer never extends a broken chain).

    Raises
    ------
    LineageError
        If the existing log does not replay: appending to it would bless the tampering.
    """
    try:
        state, _ = replay_chain(directory, reuse=True)
    except VerificationError as exc:
        raise LineageError(f"refusing to extend a broken audit log: {exc}") from None
    return state


def append_entry(directory: Path, kind: str, details: dict[str, Any]) -> ChainState:
    """Append one entry to the chain (fsync'd) and return the new state.

    Parameters
    ----------
    kind:
        ``mask``, ``access`` (unmask), ``erase``, ``key_rotation``, ``rekey``...
    details:
        Flat strings and integers only: ids, counts, hashes; never a data value or key.
    """
    state = read_chain(directory)
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
    line = canonical(entry)
    try:
        with path.open("ab") as fh:
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
