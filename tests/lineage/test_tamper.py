"""The tamper suite of docs/lineage.md: each case refused by verify AND by the next run.

Every case starts from a directory written by real runs (two ``run_mask`` runs and an
erase event: 5 audit entries), tampers with it as someone with write access but without
the keyring would (recomputing the public ``prev`` links where the case says so), then
checks that ``verify`` names the problem, that the next run refuses with one line, and
that the refused run left every file of the directory byte-identical.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.errors import LineageError, VerificationError
from biomask.keys import Keyring
from biomask.lineage import record_event, verify
from biomask.lineage._util import canonical, sha256_hex
from biomask.lineage.audit import GENESIS
from biomask.lineage.head import DirectoryLock
from biomask.pipeline import run_mask
from biomask.policies import parse_policy
from tests.lineage.conftest import tree_bytes

POLICY = """\
version: 1
dataset: people
entities:
  subject: {column: subject_id}
columns:
  subject_id: {op: tokenize, domain: subject}
  score: {op: keep}
"""


@dataclass
class Site:
    root: Path
    lineage: Path
    ring: Keyring
    receipts: list[str]

    def run(self, out: str, *, receipt: str | None = None) -> None:
        """One more real run into the same lineage directory."""
        summary = run_mask(
            parse_policy(POLICY),
            self.ring,
            str(self.root / "in.parquet"),
            str(self.root / out),
            lineage_dir=self.lineage,
            receipt=receipt,
        )
        assert summary.receipt is not None
        self.receipts.append(summary.receipt)

    def verify(self, **kw: object) -> object:
        return verify(self.lineage, public_key=self.ring.public_key_pem(), **kw)  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    table = pa.table({"subject_id": [f"S-{i:06d}" for i in range(20)], "score": range(20)})
    pq.write_table(table, tmp_path / "in.parquet")
    s = Site(tmp_path, tmp_path / "people.lineage", Keyring.ephemeral(), [])
    s.run("out1.parquet")
    s.run("out2.parquet")
    record_event(s.lineage, s.ring, "erase", {"entity": "subject", "subject_token": "T1"})
    return s


# -- tampering, as someone without the keyring would ------------------------------------------


def _entries(site: Site) -> list[dict[str, object]]:
    return [json.loads(x) for x in (site.lineage / "audit.jsonl").read_bytes().splitlines()]


def _rewrite(site: Site, entries: list[dict[str, object]]) -> None:
    """Write ``entries`` back with seq and every ``prev`` link recomputed (MACs kept)."""
    prev = GENESIS
    lines = []
    for n, e in enumerate(entries):
        e = dict(e, seq=n, prev=prev)
        line = canonical(e)
        prev = sha256_hex(line)
        lines.append(line + b"\n")
    (site.lineage / "audit.jsonl").write_bytes(b"".join(lines))


def edit(site: Site) -> None:
    es = _entries(site)
    es[1]["details"] = {**es[1]["details"], "rows_quarantined": 0, "rows_out": 999}  # type: ignore[dict-item]
    _rewrite(site, es)


def insert(site: Site) -> None:
    es = _entries(site)
    _rewrite(site, [*es[:2], dict(es[2], kind="key.rotate"), *es[2:]])


def delete(site: Site) -> None:
    es = _entries(site)
    _rewrite(site, es[:2] + es[4:])  # the second run never happened


def reorder(site: Site) -> None:
    es = _entries(site)
    _rewrite(site, [es[0], es[2], es[1], *es[3:]])


def truncate(site: Site) -> None:
    _rewrite(site, _entries(site)[:3])


def remove_manifest(site: Site) -> None:
    (site.lineage / "manifest.json").unlink()


def resign_with_own_key(site: Site) -> None:
    """Delete the erase event, then re-sign the head with a forger's key and swap the PEM."""
    es = _entries(site)[:-1]
    _rewrite(site, es)
    forger = Keyring.ephemeral()
    path = site.lineage / "manifest.json"
    head = json.loads(path.read_bytes())
    last = canonical(dict(es[-1], seq=len(es) - 1))  # _rewrite kept this line as it was
    head["audit"] = {"file": "audit.jsonl", "count": len(es), "head": sha256_hex(last)}
    head["signing_key_id"] = forger.signing_key_id
    head["signing_key_fingerprint"] = forger.signing_key_fingerprint
    data = canonical(head)
    path.write_bytes(data)
    sig = base64.b64encode(forger.signing_key().sign(data)) + b"\n"
    (site.lineage / "manifest.sig").write_bytes(sig)
    (site.lineage / "public_key.pem").write_bytes(forger.public_key_pem())


CASES: dict[str, tuple[Callable[[Site], None], str, str]] = {
    # case: (tamper, verify's message, the next run's message)
    "edit an entry": (edit, "does not match the signed chain head", "line 2: its MAC"),
    "insert an entry": (insert, "6 entries, the signed manifest says 5", "line 3: its MAC"),
    "delete entries": (delete, "3 entries, the signed manifest says 5", "line 3: its MAC"),
    "reorder entries": (reorder, "does not match the signed chain head", "line 2: its MAC"),
    "truncate the log": (truncate, "3 entries, the signed manifest says 5", "3 entries, the"),
    "remove the manifest": (
        remove_manifest,
        "manifest.json not found",
        "present but manifest.json is missing (the signed manifest was removed)",
    ),
    "swap the public key and re-sign": (
        resign_with_own_key,
        "the manifest names signing key",
        "manifest.json was signed by another key",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_refused_by_verify_and_by_the_next_run(site: Site, case: str) -> None:
    tamper, verify_says, run_says = CASES[case]
    site.verify()  # untouched: fine
    tamper(site)
    with pytest.raises(VerificationError, match=verify_says):
        site.verify()
    before = tree_bytes(site.lineage)
    with pytest.raises(LineageError) as info:
        site.run("out3.parquet")
    msg = str(info.value)
    assert msg.startswith(f"refusing to extend lineage {site.lineage}: ") and run_says in msg
    assert msg.endswith("nothing was written") and "\n" not in msg
    assert tree_bytes(site.lineage) == before  # the refused run wrote nothing
    assert not (site.root / "out3.parquet").exists()
    # the first batch was masked while the head was checked: its staged output is gone too
    assert not list(site.root.glob(".out3.parquet.tmp-*"))


def test_the_public_links_alone_miss_a_recomputed_edit_the_keyring_does_not(site: Site) -> None:
    """Without the keyring an auditor relies on the signed head; with it, on every MAC."""
    edit(site)
    with pytest.raises(VerificationError, match="line 2: its MAC does not match"):
        site.verify(keyring=site.ring)


def test_rollback_to_an_earlier_copy_is_caught_with_a_receipt(site: Site) -> None:
    old = site.root / "copy-after-run-1"
    site.receipts.clear()
    site.run("out3.parquet")
    shutil.copytree(site.lineage, old)
    site.run("out4.parquet")
    receipt = site.receipts[-1]
    shutil.rmtree(site.lineage)
    shutil.copytree(old, site.lineage)  # the directory as it was before run 4: signed, valid
    site.verify()  # without a receipt nothing can tell: the threat model says so
    with pytest.raises(VerificationError, match=r"older than the receipt: 7 audit entries, the"):
        site.verify(receipt=receipt)
    before = tree_bytes(site.lineage)
    with pytest.raises(LineageError, match="older than the receipt"):
        site.run("out5.parquet", receipt=receipt)
    assert tree_bytes(site.lineage) == before


def test_a_diverged_directory_is_caught_with_a_receipt(site: Site) -> None:
    old = site.root / "copy"
    shutil.copytree(site.lineage, old)
    site.run("out3.parquet")
    receipt = site.receipts[-1]
    shutil.rmtree(site.lineage)
    shutil.copytree(old, site.lineage)
    site.run("other.parquet")  # a different run 3 on the rolled-back copy: same length
    with pytest.raises(VerificationError, match="diverged from the receipt: its first 7"):
        site.verify(receipt=receipt)
    before = tree_bytes(site.lineage)
    with pytest.raises(LineageError, match="diverged from the receipt"):
        site.run("out5.parquet", receipt=receipt)
    assert tree_bytes(site.lineage) == before
    # a receipt of an earlier state is fine: the directory grew from it
    site.verify(receipt=site.receipts[0])


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(site: Site) -> None:
    before = tree_bytes(site.lineage)
    with DirectoryLock(site.lineage):  # a run in progress elsewhere
        with pytest.raises(LineageError) as info:
            site.run("out3.parquet")
        assert str(info.value) == (
            f"lineage directory {site.lineage} is locked by another run; nothing was "
            "written (set BIOMASK_LINEAGE_LOCK_WAIT=SECONDS to wait)"
        )
        assert tree_bytes(site.lineage) == before
        assert not list(site.root.glob(".out3.parquet.tmp-*"))
        with pytest.raises(LineageError, match="locked by another run"):
            record_event(site.lineage, site.ring, "erase", {"subject_token": "T2"})
    assert tree_bytes(site.lineage) == before
    site.verify()


_WRITER = """
import sys
from biomask.keys import Keyring
from biomask.lineage import record_event
ring = Keyring.open(sys.argv[1], "pw")
for i in range(int(sys.argv[3])):
    record_event(sys.argv[2], ring, "note", {"writer": sys.argv[4], "i": i}, lock_timeout=60)
"""


def test_two_concurrent_writers_wait_and_never_interleave(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k.json", "pw")
    lineage = tmp_path / "events.lineage"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path / "k.json"), str(lineage), "6", w],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    report = verify(lineage, public_key=ring.public_key_pem(), keyring=ring)
    assert report.audit_entries == 12
    lines = [json.loads(x) for x in (lineage / "audit.jsonl").read_bytes().splitlines()]
    for w in ("a", "b"):  # each writer's events in its own order, none lost
        assert [e["details"]["i"] for e in lines if e["details"]["writer"] == w] == list(range(6))
