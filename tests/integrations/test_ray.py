"""Ray: the distributed run equals the single-process run, row for row."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'biomask[ray]'")

from biomask.cli import main  # noqa: E402
from biomask.demo import generate  # noqa: E402

POLICY = """\
version: 1
dataset: subjects
entities:
  subject: {column: subject_id}
columns:
  subject_id:      {op: tokenize, domain: subject}
  full_name:       {op: pseudonym, domain: person}
  date_of_birth:   {op: date_shift, entity: subject}
  gender:          {op: keep, quasi_identifier: true}
  nationality:     {op: keep}
  passport_number: {op: tokenize, domain: passport, reversible: true, format: icao_document}
  email:           {op: email, domain: email}
  phone:           {op: phone, domain: phone}
  address_city:    {op: redact}
"""


def test_ray_output_equals_local_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    data = generate(600, seed=9, with_notes=False, with_templates=False)
    os.mkdir("in")
    for i in range(3):  # three files: several Ray blocks
        pq.write_table(data.subjects.slice(i * 200, 200), f"in/part-{i}.parquet")
    Path("policy.yaml").write_text(POLICY)
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    assert (
        main(
            [
                "mask",
                "--policy",
                "policy.yaml",
                "--input",
                "in",
                "--output",
                "local",
                "--keyring",
                "k.json",
            ]
        )
        == 0
    )
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"BIOMASK_PASSPHRASE": "pw"}},
    )
    try:
        rc = main(
            [
                "mask",
                "--policy",
                "policy.yaml",
                "--input",
                "in",
                "--output",
                "viaray.parquet",
                "--keyring",
                "k.json",
                "--engine",
                "ray",
            ]
        )
    finally:
        ray.shutdown()
    assert rc == 0
    local = pq.read_table("local").sort_by("subject_id")
    dist = pq.read_table("viaray.parquet").sort_by("subject_id")
    assert local.num_rows == dist.num_rows == 600
    assert local.select(dist.column_names).equals(dist)
    assert main(["audit", "verify", "viaray.parquet.lineage"]) == 0
