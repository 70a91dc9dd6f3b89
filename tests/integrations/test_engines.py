"""One pipeline, three engines: local, Ray and Spark write the same bytes, lineage verified.

One local Spark session (``local[2]``) and one local Ray (2 CPUs) serve the module:
starting either costs seconds (one more JVM starts in a CLI process, to see what a user's
terminal gets). Template ciphertexts differ by design (random nonces, a data key per
worker), so they are compared after decryption.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pyspark = pytest.importorskip("pyspark", reason="Spark is an optional extra: biomask[spark]")
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'biomask[ray]'")

from biomask import mask  # noqa: E402
from biomask.cli import main  # noqa: E402
from biomask.demo import generate  # noqa: E402
from biomask.integrations.spark import local_session, mask_dataframe, new_token  # noqa: E402
from biomask.keys import Keyring  # noqa: E402
from biomask.masking import REASON_COLUMN, Unmasker  # noqa: E402
from biomask.policies import load_policy  # noqa: E402
from tests.lineage.conftest import read_events  # noqa: E402

ENGINES = ("local", "ray", "spark")


@pytest.fixture(scope="module")
def engines() -> Iterator[object]:
    """A local Spark session and a local Ray, both kept for the module's runs."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    spark = local_session(new_token())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield spark
    finally:
        ray.shutdown()
        spark.stop()


def _plain_templates(path: Path, policy: Path, ring: Keyring, table: str | None) -> pa.Table:
    um = Unmasker(load_policy(policy), ring, table=table)
    tbl = pq.read_table(path)
    out = [um.mask_batch(b).output for b in tbl.to_batches()]
    return pa.Table.from_batches(out, schema=out[0].schema).select(["template"])


def _same_bytes(a: pa.Table, b: pa.Table) -> bool:
    if a.num_rows == 0:
        return b.num_rows == 0 and a.schema.equals(b.schema)
    x = a.combine_chunks().to_batches()[0].serialize()
    return bool(x == b.combine_chunks().to_batches()[0].serialize())


def _run_all(policy: Path, inp: Path, suffix: str, *extra: str) -> None:
    """Mask ``inp`` with every engine into ``<engine><suffix>``; each run's lineage verifies."""
    for engine in ENGINES:
        args = ["mask", "--policy", str(policy), "--input", str(inp), "--keyring", "k.json"]
        args += ["--output", f"{engine}{suffix}", "--engine", engine, *extra]
        assert main(args) == 0, engine
        lineage = Path(f"{engine}{suffix}.lineage")
        assert main(["audit", "verify", str(lineage), "--public-key", "k.pem"]) == 0
        assert [e["eventType"] for e in read_events(lineage)] == ["START", "COMPLETE"]


@pytest.fixture()
def ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keyring:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    monkeypatch.setenv("BIOMASK_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "init", "--keyring", "k.json"]) == 0
    assert main(["keys", "export-public", "--keyring", "k.json", "--out", "k.pem"]) == 0
    return Keyring.open("k.json")


def test_demo_tables_are_byte_identical_on_every_engine(engines: object, ring: Keyring) -> None:
    from biomask.demo.run import demo_policy_text  # the demo's own two-table policy

    data = generate(120, seed=5)
    Path("in").mkdir()
    pq.write_table(data.subjects, "in/subjects.parquet")
    pq.write_table(data.captures, "in/captures.parquet")
    Path("policy.yaml").write_text(demo_policy_text())
    _run_all(Path("policy.yaml"), Path("in"), "", "--batch-size", "50")
    for table in ("subjects", "captures"):
        local = pq.read_table(f"local/{table}.parquet")
        for engine in ("ray", "spark"):
            other = pq.read_table(f"{engine}/{table}.parquet")
            assert local.schema.equals(other.schema, check_metadata=True), (engine, table)
            clear = [c for c in local.column_names if c != "template"]
            assert _same_bytes(local.select(clear), other.select(clear)), (engine, table)
            if "template" in local.column_names:
                a = _plain_templates(
                    Path(f"local/{table}.parquet"), Path("policy.yaml"), ring, table
                )
                b = _plain_templates(
                    Path(f"{engine}/{table}.parquet"), Path("policy.yaml"), ring, table
                )
                assert a.equals(b), (engine, table)


@pytest.mark.slow
def test_200k_rows_are_byte_identical_on_every_engine(engines: object, ring: Keyring) -> None:
    """A table of 200k rows: ten batches, several in flight on Ray and Spark at once."""
    n = 200_000
    ids = pa.array([f"SUBJ-{i:08d}" for i in range(n)])
    ts = pc.cast(pa.array(range(1_600_000_000, 1_600_000_000 + n), pa.int64()), pa.timestamp("s"))
    ages = pa.array([None if i == 777 else i % 90 for i in range(n)], pa.int32())
    tbl = pa.table({
        "subject_id": ids,
        "capture_ts": ts,
        "age": ages,
        "device_serial": pa.array([f"DEV-{i % 997:05d}" for i in range(n)]),
        "site": pa.array(["A", "B", "C", "D"] * (n // 4)),
    })  # fmt: skip
    pq.write_table(tbl, "big.parquet", row_group_size=50_000)
    Path("policy.yaml").write_text(
        "version: 1\ndataset: big\nentities:\n  subject: {column: subject_id}\ncolumns:\n"
        "  subject_id: {op: tokenize, domain: subject}\n"
        "  capture_ts: {op: date_shift, entity: subject}\n"
        "  age: {op: generalize, bucket: 10}\n"
        "  device_serial: {op: hash, domain: device}\n"
        "  site: {op: keep, quasi_identifier: true}\n"
    )
    _run_all(Path("policy.yaml"), Path("big.parquet"), ".parquet", "--batch-size", "20000")
    assert pq.read_table("local.parquet").num_rows == n
    for engine in ("ray", "spark"):  # the whole file, footer and metadata included
        assert Path(f"{engine}.parquet").read_bytes() == Path("local.parquet").read_bytes()


def _notes_table(n: int) -> pa.Table:
    """``n`` captures with e-mails, names, free-text notes and templates, made column-wise.

    Notes come from a small pool (the text operator analyses each distinct note once per
    batch, as on real data where notes repeat), but they name the rows' own people and
    e-mail addresses, and one in eight carries a date that shifts by the row's subject.
    """
    import numpy as np

    given = ["Isabel", "Ana", "Selma", "Tomas", "Mei", "Kwame", "Olga", "Ravi"]
    family = ["Petrosyan", "Lindqvist", "Abdellaoui", "Novak", "Chen", "Mensah", "Ivanova"]
    i = np.arange(n)
    names = [f"{given[k % 8]} {family[k % 7]}" for k in range(56)]
    full = pa.array(names).take(pa.array(i % 56))
    pool = [
        *(f"Call {nm} back about the recapture." for nm in names[:24]),
        *(f"Mail sent to user{k}@example.org by {names[k]}." for k in range(24)),
        *(f"{names[k]} enrolled on 12/03/2021, sensor cleaned." for k in range(8)),
        "Sensor cleaned.",
        None,
    ]
    rng = np.random.default_rng(7)
    templates = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    return pa.table({
        "subject_id": pc.binary_join_element_wise("SUBJ-", pa.array([f"{k:08d}" for k in i]), ""),
        "capture_ts": pc.cast(pa.array(1_600_000_000 + i * 37, pa.int64()), pa.timestamp("s")),
        "full_name": full,
        "email": pa.array([f"user{k}@example.org" for k in i]),
        "note": pa.array(pool).take(pa.array(i % len(pool))),
        "age": pa.array(i % 90, pa.int32()),
        "template": pa.array([t.tobytes() for t in templates], pa.binary()),
    })  # fmt: skip


@pytest.mark.slow
def test_200k_rows_with_text_and_templates_are_identical_on_every_engine(
    engines: object, ring: Keyring
) -> None:
    """Ids, dates, e-mails, names, notes (with the run's lexicon) and templates at 200k rows.

    Every column but the templates is compared byte for byte; the templates after
    decryption (their nonces and run data keys differ by design). Each run's lineage
    verifies (``_run_all``).
    """
    n = 200_000
    pq.write_table(_notes_table(n), "notes.parquet", row_group_size=50_000)
    Path("policy.yaml").write_text(
        "version: 1\ndataset: notes\nentities:\n  subject: {column: subject_id}\ncolumns:\n"
        "  subject_id: {op: tokenize, domain: subject}\n"
        "  capture_ts: {op: date_shift, entity: subject}\n"
        "  full_name: {op: pseudonym, domain: person}\n"
        "  email: {op: email, domain: email}\n"
        "  note: {op: text, entities: {PERSON: person, EMAIL_ADDRESS: email}}\n"
        "  age: {op: generalize, bucket: 10, quasi_identifier: true}\n"
        "  template: {op: encrypt, entity: subject}\n"
    )
    _run_all(Path("policy.yaml"), Path("notes.parquet"), ".parquet", "--batch-size", "50000")
    local = pq.read_table("local.parquet")
    assert local.num_rows == n
    clear = [c for c in local.column_names if c != "template"]
    plain = _plain_templates(Path("local.parquet"), Path("policy.yaml"), ring, None)
    for engine in ("ray", "spark"):
        other = pq.read_table(f"{engine}.parquet")
        assert other.num_rows == n, engine
        assert local.schema.equals(other.schema, check_metadata=True), engine
        for c in clear:
            assert _same_bytes(local.select([c]), other.select([c])), (engine, c)
        assert plain.equals(
            _plain_templates(Path(f"{engine}.parquet"), Path("policy.yaml"), ring, None)
        )
    # the notes were masked, with the run's own tokens
    notes = local.column("note").to_pylist()
    assert not any(re.search(r"Petrosyan|Lindqvist|\buser\d+@", t) for t in notes if t)


def test_mask_dataframe_equals_the_in_memory_masker(
    engines: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIOMASK_PASSPHRASE", "pw")
    spark = engines
    (tmp_path / "p.yaml").write_text(
        "version: 1\ndataset: people\nentities:\n  subject: {column: subject_id}\ncolumns:\n"
        "  subject_id: {op: tokenize, domain: subject}\n"
        "  age: {op: generalize, bucket: 10}\n"
        "  email: {op: email, domain: email}\n"
    )
    policy = load_policy(tmp_path / "p.yaml")
    ring = Keyring.create(tmp_path / "k.json")
    tbl = pa.table({
        "subject_id": [f"S-{i:08d}" for i in range(40)],
        "age": pa.array(list(range(40)), pa.int64()),
        "email": [f"user{i}@example.org" for i in range(40)],
    })  # fmt: skip
    df = spark.createDataFrame(tbl.to_pandas()).repartition(3)  # type: ignore[attr-defined]
    out = pa.Table.from_pandas(mask_dataframe(df, policy, ring).toPandas(), preserve_index=False)
    assert out.num_rows == tbl.num_rows
    assert pc.all(pc.is_null(out.column(REASON_COLUMN))).as_py()
    expect = mask(tbl, policy, ring)
    got = out.drop_columns([REASON_COLUMN]).sort_by("subject_id")
    assert got.to_pylist() == expect.sort_by("subject_id").to_pylist()


def test_a_policy_error_in_a_worker_is_the_one_line_the_local_engine_prints(
    engines: object, ring: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    """Raised inside a Ray actor or a Spark Python worker (a column of shapes too small to
    permute), the error reaches the user as the local engine's one line, not as the
    engine's wrapper (whose text is the worker's traceback), and nothing is written."""
    pq.write_table(pa.table({"sid": ["A-1", "A-2", "A-3"]}), "small.parquet")
    Path("small.yaml").write_text(
        "version: 1\ndataset: d\ncolumns:\n  sid: {op: tokenize, domain: s}\n"
    )
    said = {}
    for engine in ENGINES:
        args = ["mask", "--policy", "small.yaml", "--input", "small.parquet"]
        args += ["--keyring", "k.json", "--output", f"{engine}.parquet", "--engine", engine]
        capsys.readouterr()
        assert main(args) != 0, engine
        said[engine] = capsys.readouterr().err
        assert not Path(f"{engine}.parquet").exists(), engine
    assert said["local"].startswith("biomask: error: small.yaml:4: columns.sid: tokenize on")
    assert said["local"].count("\n") == 1 and "Traceback" not in said["local"]
    assert said["ray"] == said["local"] and said["spark"] == said["local"]


def test_a_spark_session_of_another_token_is_refused(engines: object) -> None:
    with pytest.raises(Exception, match="already running with other worker keys"):
        local_session(new_token())


def test_the_spark_worker_token_is_on_no_command_line(engines: object) -> None:
    """PySpark passes session settings to spark-submit as arguments, which ``ps`` shows to
    every user: the token reaches the local workers through the JVM's environment only,
    the session's settings name it by fingerprint, and this process's environment does
    not keep it."""
    import glob

    from biomask.integrations.spark import session_token

    conf = engines.sparkContext.getConf()  # type: ignore[attr-defined]
    token = session_token(conf)
    assert token and conf.get("spark.executorEnv.BIOMASK_WORKER_TOKEN") is None
    assert conf.get("spark.biomask.workerTokenId") and token not in str(conf.getAll())
    assert "BIOMASK_WORKER_TOKEN" not in os.environ
    # the workers hold it: a job that opens the key handle in them runs (the other tests)
    engines.range(4).count()  # type: ignore[attr-defined]
    seen = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as fh:
                if token.encode() in fh.read():
                    seen.append(path)
        except OSError:  # a process that ended meanwhile
            continue
    assert seen == []


def test_the_jvm_startup_noise_is_dropped_and_everything_else_passes() -> None:
    import threading

    from biomask.integrations.spark import _pump

    src_r, src_w = os.pipe()
    out_r, out_w = os.pipe()
    lines = [
        b"WARNING: Using incubator modules: jdk.incubator.vector\n",
        b'Setting default log level to "WARN".\n',
        b"To adjust logging level use sc.setLogLevel(newLevel). For SparkR, use setLogLevel(n).\n",
        b"26/12/04 08:00:00 WARN NativeCodeLoader: Unable to load native-hadoop library\n",
        b"26/12/04 08:00:01 ERROR Executor: Exception in task 0.0\n",
        b"Traceback (most recent call last):\n",
    ]
    t = threading.Thread(target=_pump, args=(src_r, {"fd": out_w}, threading.Lock()))
    t.start()
    os.write(src_w, b"".join(lines))
    os.close(src_w)
    t.join(timeout=10)
    os.close(out_w)
    with os.fdopen(out_r, "rb") as got:
        assert got.read() == b"".join(lines[4:])  # errors of the run still reach the user


def test_spark_engine_prints_no_jvm_startup_lines(tmp_path: Path) -> None:
    """A normal ``--engine spark`` run that starts its own JVM: stderr stays empty."""
    import subprocess
    import sys

    env = {**os.environ, "BIOMASK_PASSPHRASE": "pw"}
    env.pop("RAY_ADDRESS", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "biomask", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)

    assert cli("keys", "init", "--keyring", "k.json").returncode == 0
    pq.write_table(pa.table({"id": [f"S-{i:08d}" for i in range(50)]}), tmp_path / "in.parquet")
    (tmp_path / "p.yaml").write_text(
        "version: 1\ndataset: d\ncolumns:\n  id: {op: tokenize, domain: subject}\n"
    )
    res = cli(
        "mask", "--policy", "p.yaml", "--input", "in.parquet", "--output", "out.parquet",
        "--keyring", "k.json", "--engine", "spark",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    for noise in ("Using incubator modules", "Setting default log level", "setLogLevel",
                  "NativeCodeLoader"):  # fmt: skip
        assert noise not in res.stderr, res.stderr
    assert res.stderr == ""
    assert "masked 50 rows -> 50 out" in res.stdout


def test_spark_sends_a_large_batch_as_bounded_row_slices(
    engines: object, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch over ROW_BYTES travels as row slices (the driver JVM's heap bounds a job):
    the masked columns are the local engine's, row for row; lineage verifies."""
    import biomask.integrations.spark as sp

    n = 6_000
    tbl = pa.table({
        "subject_id": pa.array([f"SUBJ-{i:08d}" for i in range(n)]),
        "email": pa.array([f"user{i:05d}@example.org" for i in range(n)]),
        "age": pa.array([i % 90 for i in range(n)], pa.int32()),
    })  # fmt: skip
    pq.write_table(tbl, "wide.parquet")
    Path("policy.yaml").write_text(
        "version: 1\ndataset: wide\nentities:\n  subject: {column: subject_id}\ncolumns:\n"
        "  subject_id: {op: tokenize, domain: subject}\n"
        "  email: {op: email, domain: email}\n"
        "  age: {op: generalize, bucket: 10}\n"
    )
    batch = tbl.to_batches()[0]
    monkeypatch.setattr(sp, "ROW_BYTES", batch.nbytes // 5)
    monkeypatch.setattr(sp, "WINDOW_BYTES", batch.nbytes // 2)
    parts = list(sp._slices(batch, sp.ROW_BYTES))
    assert len(parts) >= 5 and all(p.nbytes <= sp.ROW_BYTES for p in parts)
    assert pa.Table.from_batches(parts).equals(pa.Table.from_batches([batch]))
    for engine in ("local", "spark"):
        args = ["mask", "--policy", "policy.yaml", "--input", "wide.parquet"]
        args += ["--keyring", "k.json", "--output", f"{engine}.parquet", "--engine", engine]
        assert main([*args, "--batch-size", str(n)]) == 0, engine
        lineage = f"{engine}.parquet.lineage"
        assert main(["audit", "verify", lineage, "--public-key", "k.pem"]) == 0
    local, spark = pq.read_table("local.parquet"), pq.read_table("spark.parquet")
    assert spark.num_rows == n
    assert _same_bytes(local, spark)


def test_worker_errors_cross_the_spark_wire_as_themselves() -> None:
    from biomask.errors import (
        BiomaskError,
        ConnectorError,
        DecryptionError,
        KeyringError,
        PolicyError,
    )
    from biomask.integrations.spark import _error_row, _raise_error_row

    sent: list[BiomaskError] = [
        PolicyError("too small", path="p.yaml", line=4, field="columns.sid"),
        DecryptionError(),
        ConnectorError("key store k.sqlite not found"),
        KeyringError("wrong passphrase"),
    ]
    for exc in sent:
        with pytest.raises(type(exc)) as info:
            _raise_error_row(_error_row(exc))
        assert type(info.value) is type(exc) and str(info.value) == str(exc)
    with pytest.raises(BiomaskError, match=r"^odd$"):  # a name it does not know: the base
        _raise_error_row('{"type": "SystemExit", "message": "odd"}')
