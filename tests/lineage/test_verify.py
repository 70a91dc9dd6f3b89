"""verify: passes on an untouched directory, names the first failure of each tampering."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomask.errors import LineageError, VerificationError
from biomask.keys import Keyring
from biomask.lineage import record_event, verify
from biomask.lineage._util import canonical
from tests.lineage.conftest import MakeRun, Run


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _audit(run: Run) -> Path:
    return run.directory / "audit.jsonl"


def _with_events(run: Run, n: int = 3) -> Run:
    """Add standalone events so the chain has middle entries to tamper with."""
    for i in range(n):
        record_event(run.directory, run.keyring, "key_rotation", {"new_key_id": f"k{i}"})
    return run


def test_untouched_directory_verifies(make_run: MakeRun) -> None:
    run = make_run()
    report = verify(run.directory, public_key=run.keyring.public_key_pem())
    assert report.ok and report.key_source == "given" and report.status == "completed"
    assert report.files_checked == 2 and report.audit_entries == 2
    assert report.outputs == [run.output_path.resolve()]
    assert [name for name, _ in report.checks] == [
        "manifest.json",
        "signing key",
        "manifest.sig",
        "audit.jsonl",
        "lineage files",
        "data files",
        "last run",
    ]
    assert report.notes == []
    # raw and PEM-file keys work too
    assert verify(run.directory, public_key=run.keyring.public_key_raw()).ok
    pem = run.directory.parent / "signer.pem"
    pem.write_bytes(run.keyring.public_key_pem())
    assert verify(run.directory, public_key=pem).ok


def test_no_key_is_refused_and_the_embedded_key_is_flagged_as_weak(make_run: MakeRun) -> None:
    run = make_run()
    with pytest.raises(VerificationError) as info:
        verify(run.directory)
    assert str(info.value) == (
        "no trusted public key: pass --public-key PEM (the signer's key, obtained out of "
        "band) or --trust-embedded-key (integrity only, not origin)"
    )
    report = verify(run.directory, trust_embedded_key=True)
    assert report.key_source == "directory"
    assert any("integrity only, not origin" in n and "forger" in n for n in report.notes)


def test_changed_output_file(make_run: MakeRun) -> None:
    run = make_run()
    data = bytearray(run.output_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    run.output_path.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"output file .*out\.parquet has changed"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_missing_output_file(make_run: MakeRun) -> None:
    run = make_run()
    run.output_path.unlink()
    with pytest.raises(VerificationError, match="is missing"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_edited_entry(make_run: MakeRun) -> None:
    run = _with_events(make_run())
    lines = _lines(_audit(run))
    entry = json.loads(lines[1])
    entry["details"]["rows_out"] = 999
    lines[1] = canonical(entry) + b"\n"  # even re-canonicalized, the next link breaks
    _audit(run).write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match=r"line 3: 'prev' does not match"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_non_canonical_edit(make_run: MakeRun) -> None:
    run = make_run()
    lines = _lines(_audit(run))
    lines[0] = json.dumps(json.loads(lines[0]), indent=1).replace("\n", " ").encode() + b"\n"
    _audit(run).write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match="line 1: not in canonical form"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_inserted_entry(make_run: MakeRun) -> None:
    run = _with_events(make_run())
    lines = _lines(_audit(run))
    lines.insert(2, lines[1])
    _audit(run).write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match=r"line 3: sequence number 1 where 2"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_deleted_entry(make_run: MakeRun) -> None:
    run = _with_events(make_run())
    lines = _lines(_audit(run))
    del lines[2]
    _audit(run).write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match=r"line 3: sequence number 3 where 2"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_reordered_entries(make_run: MakeRun) -> None:
    run = _with_events(make_run())
    lines = _lines(_audit(run))
    lines[1], lines[2] = lines[2], lines[1]
    _audit(run).write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match=r"line 2: sequence number"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_cut_tail(make_run: MakeRun) -> None:
    run = _with_events(make_run())
    lines = _lines(_audit(run))
    _audit(run).write_bytes(b"".join(lines[:-2]))
    with pytest.raises(VerificationError, match=r"has 3 entries, the signed manifest says 5"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_half_line_cut(make_run: MakeRun) -> None:
    run = make_run()
    data = _audit(run).read_bytes()
    _audit(run).write_bytes(data[:-10])
    with pytest.raises(VerificationError, match="incomplete"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_edited_last_entry(make_run: MakeRun) -> None:
    run = make_run()
    lines = _lines(_audit(run))
    entry = json.loads(lines[-1])
    entry["details"]["rows_in"] = 0
    lines[-1] = canonical(entry) + b"\n"
    _audit(run).write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match="does not match the signed chain head"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_changed_manifest(make_run: MakeRun) -> None:
    run = make_run()
    path = run.directory / "manifest.json"
    doc = json.loads(path.read_bytes())
    doc["status"] = "completed!"
    path.write_bytes(canonical(doc))
    with pytest.raises(VerificationError, match=r"manifest\.json was changed after signing"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_wrong_public_key(make_run: MakeRun) -> None:
    run = make_run()
    other = Keyring.ephemeral()
    with pytest.raises(VerificationError, match=r"names signing key \w+ \(sha256:.*not the key"):
        verify(run.directory, public_key=other.public_key_pem())


def test_forger_with_own_key_fails_against_out_of_band_key(make_run: MakeRun) -> None:
    run = make_run()
    run.output_path.write_bytes(b"forged output")
    from biomask.lineage._util import file_digest, sha256_hex

    (run_manifest_path,) = (run.directory / "runs").glob("*/manifest.json")
    rdoc = json.loads(run_manifest_path.read_bytes())
    for ds in rdoc["datasets"]:
        for f in ds["files"]:
            if f["path"].endswith("out.parquet"):
                f["size"] = len(b"forged output")
                f["sha256"] = file_digest(run.output_path)[0]
    rdata = canonical(rdoc)
    run_manifest_path.write_bytes(rdata)
    path = run.directory / "manifest.json"
    doc = json.loads(path.read_bytes())
    forger = Keyring.ephemeral()
    doc["runs"][0].update(sha256=sha256_hex(rdata), size=len(rdata))
    doc["signing_key_fingerprint"] = forger.signing_key_fingerprint
    data = canonical(doc)
    path.write_bytes(data)
    (run.directory / "manifest.sig").write_bytes(
        base64.b64encode(forger.signing_key().sign(data)) + b"\n"
    )
    (run.directory / "public_key.pem").write_bytes(forger.public_key_pem())
    weak = verify(run.directory, trust_embedded_key=True)  # the directory's key proves nothing
    assert weak.key_source == "directory"
    with pytest.raises(VerificationError, match=r"names signing key .* not the key given"):
        verify(run.directory, public_key=run.keyring.public_key_pem())  # ...this does


def test_changed_dossier(make_run: MakeRun) -> None:
    run = make_run()
    p = run.directory / "dossier.json"
    p.write_bytes(p.read_bytes().replace(b'"completed"', b'"complete!"'))
    with pytest.raises(VerificationError, match=r"lineage file dossier\.json has changed"):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_verify_works_with_network_blocked(
    make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run()

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("verify tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert verify(run.directory, public_key=run.keyring.public_key_pem()).ok
    run.output_path.write_bytes(b"x")
    with pytest.raises(VerificationError):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_killed_run_still_verifies_as_started(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run()
    # simulate a second run killed after start(): START + audit + 'started' manifest only
    import dataclasses
    import uuid

    from biomask.lineage import LineageRecorder

    second = dataclasses.replace(run.record, run_id=str(uuid.uuid4()))
    rec = LineageRecorder(run.directory, run.keyring, second)
    rec.start()
    report = verify(run.directory, public_key=run.keyring.public_key_pem())
    assert report.status == "started" and report.audit_entries == 3
    # the killed run is the last one; the completed one still vouches for the output
    assert report.current_run == run.record.run_id and report.run_id == second.run_id
    assert report.outputs == [run.output_path.resolve()]
    rec._lock.release()


def test_record_event_on_run_directory(make_run: MakeRun) -> None:
    run = make_run()
    record_event(run.directory, run.keyring, "erase", {"subject": "SUBJ-581942", "keys": 1})
    report = verify(run.directory, public_key=run.keyring.public_key_pem())
    assert report.audit_entries == 3 and report.status == "completed"
    last = json.loads(_lines(_audit(run))[-1])
    assert last["kind"] == "erase" and last["seq"] == 2
    assert last["details"] == {"subject": "SUBJ-581942", "keys": 1}


def test_record_event_on_fresh_directory(tmp_path: Path, keyring: Keyring) -> None:
    d = tmp_path / "keys.lineage"
    record_event(d, keyring, "key_rotation", {"new_key_id": "abcd1234"})
    record_event(d, keyring, "rekey", {"files": 3})
    report = verify(d, public_key=keyring.public_key_pem())
    assert report.status == "events" and report.audit_entries == 2 and report.files_checked == 0
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["runs"] == [] and manifest["current_run"] is None
    assert manifest["audit"]["count"] == 2


def test_record_event_refuses_tampered_or_foreign(make_run: MakeRun) -> None:
    run = make_run()
    with pytest.raises(LineageError, match="signed by another key"):
        record_event(run.directory, Keyring.ephemeral(), "erase", {"subject": "S"})
    lines = _lines(_audit(run))
    _audit(run).write_bytes(b"".join(lines[:-1]))
    with pytest.raises(LineageError, match="1 entries, the signed manifest says 2"):
        record_event(run.directory, run.keyring, "erase", {"subject": "S"})


def test_record_event_rejects_non_flat_details(tmp_path: Path, keyring: Keyring) -> None:
    with pytest.raises(LineageError, match="must be a string or an integer"):
        record_event(tmp_path / "x", keyring, "erase", {"subject": ["a"]})  # type: ignore[dict-item]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_to_the_log_is_caught(
    make_run: MakeRun, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    base = tmp_path_factory.mktemp("h")
    run = make_run(base=base, batches=1)
    record_event(run.directory, run.keyring, "key_rotation", {"new_key_id": "k"})
    raw = bytearray(_audit(run).read_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    raw[i] = new
    _audit(run).write_bytes(bytes(raw))
    with pytest.raises(VerificationError):
        verify(run.directory, public_key=run.keyring.public_key_pem())


def test_raw_public_key_with_whitespace_bytes_is_not_stripped() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from biomask.lineage.manifest import load_public_key

    for _ in range(2000):  # find a key whose raw bytes start or end with whitespace
        raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if raw != raw.strip():
            break
    pub = load_public_key(raw)
    assert pub.public_bytes(Encoding.Raw, PublicFormat.Raw) == raw


def test_prehashed_files_are_reused_after_a_rename_and_rehashed_after_a_change(
    tmp_path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray driver hashes each part as its unit finishes; the manifest must still name
    the bytes of the committed file, renamed or (if edited meanwhile) changed."""
    import hashlib
    import os

    from biomask.lineage import LineageRecorder, RunRecord
    from biomask.lineage.recorder import _dataset_digest

    rec = LineageRecorder(tmp_path / "l", keyring, RunRecord(run_id="r", command="mask", job="j"))
    part = tmp_path / "staging-part.parquet"
    part.write_bytes(b"first bytes")
    rec.prehash(part)
    final = tmp_path / "part.parquet"
    os.replace(part, final)  # the commit's rename: same inode, same mtime
    assert rec._digest(final) == (hashlib.sha256(b"first bytes").hexdigest(), 11)
    calls = []
    real = _dataset_digest

    def counting(p: Path) -> tuple[str, int]:
        calls.append(p)
        return real(p)

    monkeypatch.setattr("biomask.lineage.recorder._dataset_digest", counting)
    assert rec._digest(final)[0] == hashlib.sha256(b"first bytes").hexdigest()
    assert calls == []  # reused, not read again
    final.write_bytes(b"other bytes!")  # changed after it was hashed
    assert rec._digest(final) == (hashlib.sha256(b"other bytes!").hexdigest(), 12)
    assert calls == [final]
