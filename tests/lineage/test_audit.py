"""The audit chain: a writer checks it once per change, and never trusts a changed file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from biomask.errors import LineageError, VerificationError
from biomask.keys import Keyring
from biomask.lineage import audit
from biomask.lineage._util import canonical, sha256_hex

KEY = Keyring.ephemeral().chain_key()


def _chain(tmp_path: Path, n: int) -> Path:
    for i in range(n):
        audit.append_entry(tmp_path, "mask", {"run": f"r{i}", "rows": i}, KEY)
    return tmp_path / audit.AUDIT_FILE


def test_a_chain_this_process_wrote_is_not_replayed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chain(tmp_path, 3)
    calls = []
    real = audit.canonical
    monkeypatch.setattr(audit, "canonical", lambda e: calls.append(1) or real(e))
    state, entries = audit.replay_chain(tmp_path, reuse=True, key=KEY)
    assert state.count == 3 and [e["details"]["run"] for e in entries] == ["r0", "r1", "r2"]
    assert calls == []  # served from what append_entry recorded
    audit.replay_chain(tmp_path)  # the verifier's path checks every line
    assert len(calls) == 3
    # and the cached state is the real one
    assert audit.replay_chain(tmp_path)[0] == state


def test_an_edit_that_keeps_size_and_mtime_is_still_caught(tmp_path: Path) -> None:
    path = _chain(tmp_path, 3)
    st = path.stat()
    raw = path.read_bytes()
    forged = raw.replace(b'"rows":1', b'"rows":7')
    assert len(forged) == len(raw) and forged != raw
    path.write_bytes(forged)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moves
    with pytest.raises(LineageError, match="refusing to extend a broken audit log"):
        audit.read_chain(tmp_path, KEY)
    with pytest.raises(VerificationError, match="line 2: its MAC does not match"):
        audit.replay_chain(tmp_path, reuse=True, key=KEY)
    with pytest.raises(VerificationError, match="line 3: 'prev' does not match"):
        audit.replay_chain(tmp_path)  # the public links alone: caught at the next entry


def test_an_append_by_another_writer_is_checked(tmp_path: Path) -> None:
    path = _chain(tmp_path, 2)
    with path.open("ab") as fh:
        fh.write(b'{"not": "an entry"}\n')
    with pytest.raises(VerificationError, match="line 3: not an audit entry"):
        audit.replay_chain(tmp_path, reuse=True, key=KEY)


def test_links_recomputed_without_the_key_fail_the_mac(tmp_path: Path) -> None:
    """Editing an entry and recomputing every ``prev`` passes the public links, not the MACs."""
    path = _chain(tmp_path, 3)
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    entries[1]["details"]["rows"] = 99
    prev = audit.GENESIS
    lines = []
    for e in entries:
        e["prev"] = prev
        line = canonical(e)
        prev = sha256_hex(line)
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    state, _ = audit.replay_chain(tmp_path)  # the links alone cannot tell
    assert state.count == 3
    with pytest.raises(VerificationError, match="line 2: its MAC does not match"):
        audit.replay_chain(tmp_path, key=KEY)
    other = Keyring.ephemeral().chain_key()
    with pytest.raises(VerificationError, match="line 1: its MAC does not match"):
        audit.replay_chain(tmp_path, key=other)


def test_prefix_head_is_the_hash_of_line_n(tmp_path: Path) -> None:
    path = _chain(tmp_path, 3)
    lines = path.read_bytes().splitlines()
    assert audit.prefix_head(tmp_path, 0) == audit.GENESIS
    assert audit.prefix_head(tmp_path, 2) == sha256_hex(lines[1])
    assert audit.prefix_head(tmp_path, 3) == audit.replay_chain(tmp_path)[0].head
    assert audit.prefix_head(tmp_path, 4) is None
