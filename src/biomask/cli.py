"""The ``biomask`` command: parses arguments, calls the pipeline, prints.

Every failure a user can cause ends as one line on stderr and a non-zero exit status,
never a traceback (set ``BIOMASK_DEBUG=1`` to see one for a bug report). Long runs show a
progress bar on a terminal and stay quiet in a pipe.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.exceptions import TyperException

from biomask.errors import BiomaskError, KeyringError

app = typer.Typer(
    name="biomask",
    help="Make biometric enrolment data safe to train on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, rotate and export keyring keys.", no_args_is_help=True)
policy_app = typer.Typer(help="Validate, draft and describe policies.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and export lineage directories.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")

KeyringOpt = Annotated[Path, typer.Option("--keyring", help="Keyring file.")]
KeystoreOpt = Annotated[
    str | None,
    typer.Option(
        "--keystore",
        help="Key store for template data keys (default: <keyring>.keystore.sqlite; "
        "postgresql://... for a shared one).",
    ),
]
LineageOpt = Annotated[
    Path | None,
    typer.Option(
        "--lineage",
        help="Lineage directory (default: <output>.lineage beside a file or directory "
        "output; required for '-' and postgresql:// outputs).",
    ),
]
ReceiptsOpt = Annotated[
    Path | None,
    typer.Option(
        "--receipts",
        help="Append the lineage receipt to this file (keep it outside the lineage directory).",
    ),
]
ExpectReceiptOpt = Annotated[
    str | None,
    typer.Option(
        "--receipt",
        help="A receipt (or a file of them; the last is used) from an earlier run: refuse "
        "the run unless the lineage directory is that state or grew from it.",
    ),
]
MaxQuarantineOpt = Annotated[
    str | None,
    typer.Option(
        "--max-quarantine",
        help="Fail (nothing written) past this many quarantined rows: a count (50), a "
        "percentage (1%) or a fraction (0.01). Default: 1%.",
    ),
]


def _read_receipt(value: str | None) -> str | None:
    """A receipt given as a string, or read from a file (its last receipt line is used)."""
    if value is None or not Path(value).is_file():
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BiomaskError(f"cannot read receipt file {value}: {exc}") from None


def _receipt(receipt: str | None, receipts: Path | None, to_stderr: bool = False) -> None:
    """Print the lineage receipt; append it to ``receipts`` (outside the directory)."""
    if receipt is None:
        return
    _out(to_stderr).print(f"  receipt: {receipt}")
    if receipts is not None:
        try:
            fd = os.open(receipts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(receipt + "\n")
        except OSError as exc:
            raise BiomaskError(f"cannot append the receipt to {receipts}: {exc.strerror}") from None


def _out(to_stderr: bool = False) -> Console:
    return Console(stderr=to_stderr, highlight=False, soft_wrap=True)


# -- keys ---------------------------------------------------------------------------------
@keys_app.command("init")
def keys_init(keyring: KeyringOpt) -> None:
    """Create a new keyring; the passphrase comes from BIOMASK_PASSPHRASE."""
    from biomask.keys import Keyring

    ring = Keyring.create(keyring)
    _out().print(
        f"created keyring {keyring} (key id {ring.primary_key_id}, "
        f"signing key {ring.signing_key_id})"
    )


@keys_app.command("rotate")
def keys_rotate(
    keyring: KeyringOpt, lineage: LineageOpt = None, receipts: ReceiptsOpt = None
) -> None:
    """Add a new primary (encryption) key; old keys stay for reading. Tokens do not change."""
    from biomask.keys import Keyring
    from biomask.operations import rotate_keys

    res = rotate_keys(Keyring.open(keyring), lineage_dir=lineage)
    _out().print(
        f"rotated keyring {keyring}: new primary key {res.new_key_id} (old key "
        f"{res.old_key_id} kept for reading); tokens still derive from key "
        f"{res.token_key_id}, so outputs keep joining earlier ones"
    )
    _receipt(res.receipt, receipts)


@keys_app.command("rotate-tokens")
def keys_rotate_tokens(
    keyring: KeyringOpt, lineage: LineageOpt = None, receipts: ReceiptsOpt = None
) -> None:
    """New token keys: every token, pseudonym and date offset changes.

    Outputs masked after this no longer join outputs masked before it (subjects get new
    tokens). Use it when token keys may have leaked; 'keys rotate' is enough otherwise.
    Template key names do not change: 'erase' still finds one key per subject.
    """
    from biomask.keys import Keyring
    from biomask.operations import rotate_token_keys

    res = rotate_token_keys(Keyring.open(keyring), lineage_dir=lineage)
    _out().print(
        f"rotated the token keys of keyring {keyring}: tokens now derive from key "
        f"{res.new_key_id} (was {res.old_key_id}). Outputs masked from now on will NOT join "
        "outputs masked earlier."
    )
    _receipt(res.receipt, receipts)


@keys_app.command("export-public")
def keys_export_public(
    keyring: KeyringOpt,
    out: Annotated[Path | None, typer.Option("--out", help="Write the PEM here.")] = None,
) -> None:
    """Print (or write) the lineage signing public key for auditors."""
    from biomask.keys import Keyring

    ring = Keyring.open(keyring)
    pem = ring.public_key_pem()
    if out is None:
        sys.stdout.write(pem.decode())
        _out(to_stderr=True).print(f"fingerprint {ring.signing_key_fingerprint}")
    else:
        out.write_bytes(pem)
        _out().print(f"wrote public key to {out} (fingerprint {ring.signing_key_fingerprint})")


# -- policy -------------------------------------------------------------------------------
@policy_app.command("validate")
def policy_validate(policy: Annotated[Path, typer.Argument(help="Policy file.")]) -> None:
    """Check a policy file; prints what it does per column."""
    from biomask.policies import load_policy

    pol = load_policy(policy)
    console = _out()
    console.print(f"{policy}: valid (sha256 {pol.sha256[:16]}...)")
    for tname, spec in pol.table_specs().items():
        ops: dict[str, int] = {}
        for op in spec.columns.values():
            ops[op.op] = ops.get(op.op, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))
        console.print(f"  table {tname}: {len(spec.columns)} columns ({summary})")


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy file's JSON Schema."""
    from biomask.policies import policy_json_schema

    sys.stdout.write(json.dumps(policy_json_schema(), indent=2) + "\n")


@policy_app.command("suggest")
def policy_suggest(
    input: Annotated[str, typer.Option("--input", help="Input URI to sample.")],
    sample: Annotated[
        int, typer.Option("--sample", min=1, help="Rows to read from each table.")
    ] = 1000,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the draft here (default: stdout).")
    ] = None,
) -> None:
    """Draft a commented policy from a sample of the data; review it before use."""
    from biomask.suggest import suggest_policy

    if out is not None and out.exists():
        raise BiomaskError(f"{out} exists: choose another --out or remove it first")
    text = suggest_policy(input, sample=sample)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        _out(to_stderr=True).print(f"wrote draft policy to {out} (review it before use)")


# -- mask ---------------------------------------------------------------------------------
@app.command("mask")
def mask_cmd(
    policy: Annotated[Path, typer.Option("--policy", help="Policy file.")],
    input: Annotated[str, typer.Option("--input", help="Input URI.")],
    output: Annotated[str, typer.Option("--output", help="Output URI.")],
    keyring: KeyringOpt,
    lineage: LineageOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
    append: Annotated[bool, typer.Option("--append", help="Append to an existing table.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 65_536,
    max_quarantine: MaxQuarantineOpt = None,
    keystore: KeystoreOpt = None,
    receipts: ReceiptsOpt = None,
    receipt: ExpectReceiptOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local, ray (RAY_ADDRESS, else a local Ray) or spark (a local Spark).",
        ),
    ] = "local",
) -> None:
    """Mask INPUT into OUTPUT under POLICY."""
    from biomask.integrations import executor
    from biomask.keys import Keyring
    from biomask.pipeline import run_mask
    from biomask.policies import load_policy

    pol = load_policy(policy)
    ring = Keyring.open(keyring)
    to_stderr = output == "-"
    with _progress(to_stderr) as progress:
        summary = run_mask(
            pol,
            ring,
            input,
            output,
            lineage_dir=lineage,
            overwrite=overwrite,
            append=append,
            batch_size=batch_size,
            max_quarantine=max_quarantine,
            progress=progress,
            keystore=keystore,
            receipt=_read_receipt(receipt),
            engine=executor(engine),
        )
    print_summary(summary, to_stderr=to_stderr)
    for where, binding in pol.template_bindings().items():
        _out(to_stderr).print(f"  templates {where}: {binding}")
    _receipt(summary.receipt, receipts, to_stderr)


@app.command("unmask")
def unmask_cmd(
    policy: Annotated[Path, typer.Option("--policy", help="The policy that masked the data.")],
    input: Annotated[str, typer.Option("--input", help="Masked input URI.")],
    output: Annotated[str, typer.Option("--output", help="Output URI.")],
    keyring: KeyringOpt,
    lineage: LineageOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 65_536,
    max_quarantine: MaxQuarantineOpt = None,
    keystore: KeystoreOpt = None,
    receipts: ReceiptsOpt = None,
    receipt: ExpectReceiptOpt = None,
) -> None:
    """Reverse the reversible columns (FF1 tokens, templates); recorded as an access event."""
    from biomask.keys import Keyring
    from biomask.pipeline import run_unmask
    from biomask.policies import load_policy

    pol = load_policy(policy)
    ring = Keyring.open(keyring)
    to_stderr = output == "-"
    with _progress(to_stderr) as progress:
        summary = run_unmask(
            pol,
            ring,
            input,
            output,
            lineage_dir=lineage,
            overwrite=overwrite,
            batch_size=batch_size,
            max_quarantine=max_quarantine,
            progress=progress,
            keystore=keystore,
            receipt=_read_receipt(receipt),
        )
    print_summary(summary, to_stderr=to_stderr, title="unmasked")
    _receipt(summary.receipt, receipts, to_stderr)


def print_summary(summary: Any, *, to_stderr: bool = False, title: str = "masked") -> None:
    """The run summary: rows, columns by operator, throughput, where lineage went."""
    console = _out(to_stderr)
    ops = ", ".join(f"{k} {v}" for k, v in sorted(summary.operator_counts.items()))
    console.print(
        f"{title} {summary.rows_in:,} rows -> {summary.rows_out:,} out, "
        f"{summary.rows_quarantined:,} quarantined in {summary.seconds:.2f} s "
        f"({summary.rows_per_second:,.0f} rows/s)"
    )
    console.print(f"  columns by operator: {ops}")
    for d in getattr(summary, "created", []):
        console.print(f"  created directory: {d} (it did not exist)")
    for o in summary.outputs:
        console.print(f"  output: {o}")
    for q in summary.quarantine:
        console.print(f"  quarantine: {q}")
    console.print(f"  lineage: {summary.lineage_dir}")
    for note in getattr(summary, "notes", []):
        console.print(f"  note: {note}")


class _progress:
    """One rich progress bar per table on a terminal; nothing in a pipe.

    The table being masked is named on its bar; a table whose row count the source
    knows (Parquet footers, PostgreSQL statistics) gets a percentage and an ETA, others
    a row count. A finished table's bar stays, ticked, until the run ends.
    """

    def __init__(self, to_stderr: bool = True) -> None:
        self.enabled = sys.stderr.isatty() and not os.environ.get("BIOMASK_NO_PROGRESS")
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._current: str | None = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            SpinnerColumn(finished_text="[green]done"),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        return self.update

    def update(self, table: str, done: int, total: int | None = None) -> None:
        """Move ``table``'s bar (adding it, and closing the previous one, when it starts)."""
        bar = self._bar
        if table not in self._tasks:
            if self._current is not None:  # the previous table is done
                prev = self._tasks[self._current]
                bar.update(prev, total=bar.tasks[prev].completed)
            self._tasks[table] = bar.add_task(table, total=total, rows="")
            self._current = table
        if total is not None and done > total:  # statistics are estimates
            total = done
        rows = f"{done:,}/{total:,} rows" if total is not None else f"{done:,} rows"
        bar.update(self._tasks[table], completed=done, total=total, rows=rows)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# -- templates: erase, rekey --------------------------------------------------------------
@app.command("erase")
def erase_cmd(
    keyring: KeyringOpt,
    subject: Annotated[
        str | None,
        typer.Option("--subject", help="The subject's TOKEN (masked id), as an output holds it."),
    ] = None,
    subject_id: Annotated[
        str | None,
        typer.Option("--subject-id", help="The subject's real id instead (needs --policy)."),
    ] = None,
    token_key: Annotated[
        str | None,
        typer.Option(
            "--token-key",
            help="The token key that made TOKEN (an older output's biomask.token_key_id); "
            "default: the current one.",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="The policy that masked the data: needed for --subject-id, and for a token "
            "made after 'keys rotate-tokens'.",
        ),
    ] = None,
    integer_ids: Annotated[
        bool,
        typer.Option("--integer-ids", help="The entity's id column holds integers."),
    ] = False,
    entity: Annotated[str, typer.Option("--entity", help="Entity name in the policy.")] = "subject",
    keystore: KeystoreOpt = None,
    lineage: LineageOpt = None,
    receipts: ReceiptsOpt = None,
) -> None:
    """Destroy one subject's template key: every copy of their templates becomes unreadable."""
    from biomask.keys import Keyring
    from biomask.operations import erase_subject

    def _typed(value: str | None, what: str) -> str | int | None:
        if value is None or not integer_ids:
            return value
        try:
            return int(value)
        except ValueError:
            raise BiomaskError(f"{what} is not an integer (--integer-ids)") from None

    pol = None
    if policy is not None:
        from biomask.policies import load_policy

        pol = load_policy(policy)
    result = erase_subject(
        Keyring.open(keyring),
        entity=entity,
        token=_typed(subject, "--subject"),
        token_key=token_key,
        subject_id=_typed(subject_id, "--subject-id"),
        policy=pol,
        keystore=keystore,
        lineage_dir=lineage,
    )
    if not result.erased:
        _out().print(f"the template key of {entity} {result.subject} was already erased")
        return
    _out().print(
        f"erased the template key of {entity} {result.subject}: its templates are unreadable"
    )
    _receipt(result.receipt, receipts)


@app.command("rekey")
def rekey_cmd(
    keyring: KeyringOpt,
    keystore: KeystoreOpt = None,
    lineage: LineageOpt = None,
    receipts: ReceiptsOpt = None,
    upgrade: Annotated[
        bool,
        typer.Option(
            "--upgrade",
            help="Rewrite the template columns of --input (masked data) in the current "
            "ciphertext format, bound to the policy's row_key, into --output.",
        ),
    ] = False,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy (with --upgrade).")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", help="Masked data (with --upgrade).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Output URI (with --upgrade).")
    ] = None,
) -> None:
    """Re-wrap every stored template key under the primary key (templates untouched)."""
    from biomask.keys import Keyring
    from biomask.operations import rekey

    if upgrade:
        if policy is None or input is None or output is None:
            raise BiomaskError("rekey --upgrade needs --policy, --input and --output")
        from biomask.pipeline import run_upgrade_templates
        from biomask.policies import load_policy

        summary = run_upgrade_templates(
            load_policy(policy),
            Keyring.open(keyring),
            input,
            output,
            lineage_dir=lineage,
            keystore=keystore,
        )
        print_summary(summary, title="re-encrypted")
        _receipt(summary.receipt, receipts)
        return
    res = rekey(Keyring.open(keyring), keystore=keystore, lineage_dir=lineage)
    _out().print(f"re-wrapped {res.rewrapped} template keys under key {res.key_id}")
    _receipt(res.receipt, receipts)


# -- audit --------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    directory: Annotated[Path, typer.Argument(help="Lineage directory.")],
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="The signer's public key (PEM), obtained out of band."),
    ] = None,
    trust_embedded_key: Annotated[
        bool,
        typer.Option(
            "--trust-embedded-key",
            help="Use public_key.pem from the directory: proves integrity only, not origin.",
        ),
    ] = False,
    receipt: Annotated[
        str | None,
        typer.Option(
            "--receipt",
            help="A receipt string, or a file whose last receipt line is used: fails when "
            "the directory is older than, or diverged from, it.",
        ),
    ] = None,
    keyring: Annotated[
        Path | None,
        typer.Option("--keyring", help="The writer's keyring: check the audit entries' MACs."),
    ] = None,
) -> None:
    """Re-hash files, replay the audit chain and check the signature, offline."""
    from rich.table import Table

    from biomask.lineage import verify

    ring = None
    if keyring is not None:
        from biomask.keys import Keyring

        ring = Keyring.open(keyring)
    receipt = _read_receipt(receipt)
    report = verify(
        directory,
        public_key=public_key,
        trust_embedded_key=trust_embedded_key,
        receipt=receipt,
        keyring=ring,
    )
    console = _out()
    table = Table(title=f"biomask audit verify {directory}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", overflow="fold")
    table.add_column("", no_wrap=True)
    for name, result in report.checks:
        table.add_row(name, result, "ok")
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    if receipt is None:
        console.print("note: no --receipt given: a copy of an older signed state would verify too")
    console.print(f"receipt: {report.receipt}")
    what = "verified" if report.key_source == "given" else "integrity verified (origin unproven)"
    console.print(f"{directory}: {what}")


@audit_app.command("export")
def audit_export(
    directory: Annotated[Path, typer.Argument(help="Lineage directory.")],
    format: Annotated[str, typer.Option("--format", help="html, json or prov.")] = "html",
    out: Annotated[Path | None, typer.Option("--out", help="Output file.")] = None,
) -> None:
    """Export the EU AI Act dossier as HTML, JSON or PROV-JSON."""
    from biomask.lineage import export

    if format not in ("html", "json", "prov"):
        raise BiomaskError(f"unknown format '{format}': use html, json or prov")
    path = export(directory, format, out)  # type: ignore[arg-type]
    _out().print(f"wrote {path}")


# -- demo ---------------------------------------------------------------------------------
@app.command("demo")
def demo_cmd(
    rows: Annotated[int, typer.Option("--rows", min=1, help="Subjects to generate.")] = 1000,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("biomask-demo"),
) -> None:
    """Generate synthetic enrolment data and mask it end to end (no server needed)."""
    from biomask.demo.run import run_demo

    with _progress() as progress:
        run_demo(rows=rows, out=out, console=_out(), show=print_summary, progress=progress)


# -- identity: calibrate, leakage, filter; split ------------------------------------------
def _register_identity() -> None:
    from biomask.identity.cli import register

    register(app)


_register_identity()


# -- entry point --------------------------------------------------------------------------
_INTERRUPTED = "biomask: interrupted; nothing was written under the final names\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = app(args=args, prog_name="biomask", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer turns Ctrl-C into exit code 130 after the pipeline cleaned up
            sys.stderr.write(_INTERRUPTED)
        return code
    except typer.Exit as exc:
        code = int(getattr(exc, "exit_code", 0))
        if code == 130:
            sys.stderr.write(_INTERRUPTED)
        return code
    except TyperException as exc:  # usage errors: missing option, bad value
        sys.stderr.write(f"biomask: error: {exc.format_message()}\n")
        return 2
    except typer.Abort:
        sys.stderr.write(_INTERRUPTED)
        return 130
    except KeyringError as exc:
        sys.stderr.write(f"biomask: error: {exc}\n")
        return 3
    except BiomaskError as exc:
        sys.stderr.write(f"biomask: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(_INTERRUPTED)
        return 130
    except Exception as exc:
        if os.environ.get("BIOMASK_DEBUG"):
            raise
        sys.stderr.write(
            f"biomask: internal error ({type(exc).__name__}); rerun with BIOMASK_DEBUG=1 "
            "and report it\n"
        )
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
