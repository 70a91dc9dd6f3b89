"""``biomask identity calibrate|leakage|filter`` and ``biomask split``: parse, run, print.

Registered on the main command by :func:`register`; every option maps onto
:class:`biomask.identity.commands.Common` or a command's own parameter. Errors are
:class:`~biomask.errors.BiomaskError` and end as one line on stderr (see ``biomask.cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from biomask.errors import BiomaskError

__all__ = ["identity_app", "register"]

identity_app = typer.Typer(
    help="Template-set hygiene at an FMR threshold: calibrate, leakage, filter.",
    no_args_is_help=True,
)

IdCol = Annotated[str, typer.Option("--id-column", help="Column holding each template's id.")]
TplCol = Annotated[
    str, typer.Option("--template-column", help="Template column (floats or ciphertexts).")
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", help="The policy that encrypted the templates (and names QIs)."),
]
KeyringOpt = Annotated[
    Path | None,
    typer.Option("--keyring", help="Keyring: decrypts templates and signs the lineage."),
]
TableOpt = Annotated[
    str | None, typer.Option("--table", help="Template table of a multi-table export.")
]
KeystoreOpt = Annotated[
    str | None, typer.Option("--keystore", help="Key store of per-subject template keys.")
]
LineageOpt = Annotated[Path | None, typer.Option("--lineage", help="Lineage directory.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu (numpy BLAS) or cuda (torch on a GPU).")
]
BlockOpt = Annotated[
    int, typer.Option("--block-rows", min=1, help="Templates held per block (bounds memory).")
]
TrialsOpt = Annotated[
    int | None,
    typer.Option("--trials", min=1, help="Impostor trials (default 340,000, or 10/FMR if more)."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
ReceiptsOpt = Annotated[
    Path | None,
    typer.Option("--receipts", help="Append the lineage receipt to this file (outside it)."),
]
ReceiptOpt = Annotated[
    str | None,
    typer.Option("--receipt", help="A receipt (or a file of them) from an earlier run."),
]


def _common(
    *,
    id_column: str,
    template_column: str,
    policy: Path | None,
    keyring: Path | None,
    table: str | None,
    keystore: str | None,
    lineage: Path | None,
    report: Path | None,
    device: str = "cpu",
    block_rows: int = 65_536,
    overwrite: bool = False,
    receipt: str | None = None,
) -> Any:
    from biomask.identity.commands import Common
    from biomask.keys import Keyring
    from biomask.policies import load_policy

    if device not in ("cpu", "cuda"):
        raise BiomaskError(f"unknown device '{device}': use cpu or cuda")
    return Common(
        id_column=id_column,
        template_column=template_column,
        policy=load_policy(policy) if policy is not None else None,
        keyring=Keyring.open(keyring) if keyring is not None else None,
        table=table,
        keystore=keystore,
        lineage_dir=lineage,
        report=report,
        device=device,
        block_rows=block_rows,
        overwrite=overwrite,
        receipt=_read_receipt(receipt),
    )


def _read_receipt(value: str | None) -> str | None:
    """A receipt given as it is, or read from a file of them (the last line is used)."""
    if value is None or not Path(value).is_file():
        return value
    try:
        lines = [ln.strip() for ln in Path(value).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise BiomaskError(f"cannot read receipt file {value}: {exc.strerror}") from None
    found = [ln for ln in lines if ln]
    if not found:
        raise BiomaskError(f"receipt file {value} holds no receipt")
    return found[-1]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _tail(console: Console, report: dict[str, Any], receipts: Path | None) -> None:
    for note in report.get("notes", []):
        console.print(f"  note: {note}")
    console.print(f"  report: {report['report']}")
    console.print(f"  lineage: {report['lineage']}")
    receipt = report.get("receipt")
    if receipt:
        console.print(f"  receipt: {receipt}")
        if receipts is not None:
            try:
                with receipts.open("a", encoding="utf-8") as fh:
                    fh.write(receipt + "\n")
            except OSError as exc:
                raise BiomaskError(
                    f"cannot append the receipt to {receipts}: {exc.strerror}"
                ) from None


@identity_app.command("calibrate")
def calibrate_cmd(
    input: Annotated[str, typer.Option("--input", help="Template set URI.")],
    id_column: IdCol,
    fmr: Annotated[float, typer.Option("--fmr", help="Target false-match rate, e.g. 1e-4.")],
    template_column: TplCol = "template",
    trials: TrialsOpt = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="A reference set: its distributions and the KL."),
    ] = None,
    policy: PolicyOpt = None,
    keyring: KeyringOpt = None,
    table: TableOpt = None,
    keystore: KeystoreOpt = None,
    lineage: LineageOpt = None,
    report: ReportOpt = None,
    block_rows: BlockOpt = 65_536,
    receipts: ReceiptsOpt = None,
    receipt: ReceiptOpt = None,
) -> None:
    """Impostor and mated distributions, and the threshold for an FMR target."""
    from biomask.identity.commands import run_calibrate

    opts = _common(
        id_column=id_column,
        template_column=template_column,
        policy=policy,
        keyring=keyring,
        table=table,
        keystore=keystore,
        lineage=lineage,
        report=report,
        block_rows=block_rows,
        receipt=receipt,
    )
    rep = run_calibrate(opts, input, fmr=fmr, trials=trials, reference_uri=reference)
    inp = rep["input"]
    c = _console()
    c.print(
        f"calibrated {inp['templates']:,} templates of {inp['ids']:,} ids: threshold "
        f"{rep['threshold']:.6f} at FMR {fmr:g} (achieved {inp['fmr_achieved']:.3g} over "
        f"{inp['trials']:,} impostor trials, {inp['trials_mode']})"
    )
    mated = inp["mated"]
    if mated["count"]:
        c.print(
            f"  mated: {mated['count']:,} pairs, mean {mated['mean']:.4f}; FNMR at the "
            f"threshold {inp['fnmr_at_threshold']:.4f}"
        )
    else:
        c.print("  mated: none (no id has two templates)")
    if "realism" in rep:
        r = rep["realism"]
        c.print(f"  vs reference: KL impostor {r['kl_impostor']}, KL mated {r['kl_mated']} (nats)")
    _tail(c, rep, receipts)


@identity_app.command("leakage")
def leakage_cmd(
    a: Annotated[str, typer.Option("--a", help="First set URI (e.g. training).")],
    b: Annotated[str, typer.Option("--b", help="Second set URI (e.g. evaluation).")],
    id_column: IdCol,
    template_column: TplCol = "template",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Cosine similarity threshold.")
    ] = None,
    fmr: Annotated[
        float | None, typer.Option("--fmr", help="FMR target (threshold from --reference).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Set whose impostor scores set the FMR.")
    ] = None,
    trials: TrialsOpt = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Write the pairs (a_id, b_id, similarity).")
    ] = None,
    fail_on_match: Annotated[
        bool, typer.Option("--fail-on-match", help="Exit 1 when any pair is found.")
    ] = False,
    policy: PolicyOpt = None,
    keyring: KeyringOpt = None,
    table: TableOpt = None,
    keystore: KeystoreOpt = None,
    lineage: LineageOpt = None,
    report: ReportOpt = None,
    device: DeviceOpt = "cpu",
    block_rows: BlockOpt = 65_536,
    overwrite: OverwriteOpt = False,
    receipts: ReceiptsOpt = None,
    receipt: ReceiptOpt = None,
) -> None:
    """Every (a, b) template pair at or above the threshold, exactly."""
    from biomask.identity.commands import run_leakage

    opts = _common(
        id_column=id_column,
        template_column=template_column,
        policy=policy,
        keyring=keyring,
        table=table,
        keystore=keystore,
        lineage=lineage,
        report=report,
        device=device,
        block_rows=block_rows,
        overwrite=overwrite,
        receipt=receipt,
    )
    rep = run_leakage(
        opts,
        a,
        b,
        threshold=threshold,
        fmr=fmr,
        reference_uri=reference,
        trials=trials,
        output=output,
    )
    c = _console()
    how = f" (FMR {fmr:g})" if fmr is not None else ""
    c.print(
        f"leakage: {rep['pairs']:,} pairs at cosine >= {rep['threshold']:.6f}{how} between "
        f"a ({rep['a']['templates_compared']:,} templates) and b "
        f"({rep['b']['templates_compared']:,}); {rep['a']['ids_matched']:,} a ids and "
        f"{rep['b']['ids_matched']:,} b ids involved"
    )
    if output:
        c.print(f"  pairs: {rep['pairs_output']}")
    _tail(c, rep, receipts)
    if fail_on_match and rep["pairs"]:
        raise typer.Exit(1)


@identity_app.command("filter")
def filter_cmd(
    input: Annotated[str, typer.Option("--input", help="Input URI (a file or an export).")],
    output: Annotated[str, typer.Option("--output", help="Output URI (removed: .removed).")],
    id_column: IdCol,
    template_column: TplCol = "template",
    fmr: Annotated[float | None, typer.Option("--fmr", help="FMR target.")] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Cosine threshold instead of --fmr.")
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Calibrate on this set (default: input).")
    ] = None,
    trials: TrialsOpt = None,
    policy: PolicyOpt = None,
    keyring: KeyringOpt = None,
    table: TableOpt = None,
    keystore: KeystoreOpt = None,
    lineage: LineageOpt = None,
    report: ReportOpt = None,
    device: DeviceOpt = "cpu",
    block_rows: BlockOpt = 65_536,
    overwrite: OverwriteOpt = False,
    receipts: ReceiptsOpt = None,
    receipt: ReceiptOpt = None,
) -> None:
    """Remove near-duplicate identities; their rows move to <output>.removed with a reason."""
    from biomask.identity.commands import run_filter

    opts = _common(
        id_column=id_column,
        template_column=template_column,
        policy=policy,
        keyring=keyring,
        table=table,
        keystore=keystore,
        lineage=lineage,
        report=report,
        device=device,
        block_rows=block_rows,
        overwrite=overwrite,
        receipt=receipt,
    )
    rep = run_filter(
        opts,
        input,
        output,
        threshold=threshold,
        fmr=fmr,
        reference_uri=reference,
        trials=trials,
    )
    c = _console()
    c.print(
        f"filtered at cosine >= {rep['threshold']:.6f}: kept {rep['ids_after']:,} of "
        f"{rep['ids_before']:,} ids ({rep['retained_id_fraction']:.1%}), "
        f"{rep['rows_kept']:,} rows; {rep['rows_removed']:,} rows of {rep['ids_removed']:,} "
        f"ids moved to {rep['removed_output']}"
    )
    for name, d in rep["quasi_identifiers"].items():
        c.print(f"  {name}: largest shift {d['max_abs_shift_pp']:.2f} pp")
    _tail(c, rep, receipts)


def split_cmd(
    policy: Annotated[Path, typer.Option("--policy", help="Policy naming entities and tables.")],
    input: Annotated[str, typer.Option("--input", help="Input export (directory or file).")],
    output: Annotated[str, typer.Option("--output", help="Output directory.")],
    keyring: Annotated[Path, typer.Option("--keyring", help="Keys the subject hash; signs.")],
    by: Annotated[str, typer.Option("--by", help="The entity to split by.")] = "subject",
    ratios: Annotated[
        str, typer.Option("--ratios", help="Fractions per split, e.g. 0.8,0.1,0.1.")
    ] = "0.8,0.1,0.1",
    names: Annotated[str, typer.Option("--names", help="Split names.")] = "train,val,test",
    leakage_threshold: Annotated[
        float | None,
        typer.Option("--leakage-threshold", help="Check splits for one person under two ids."),
    ] = None,
    merge_leaks: Annotated[
        bool, typer.Option("--merge-leaks", help="Move linked subjects into one split.")
    ] = False,
    template_column: TplCol = "template",
    table: TableOpt = None,
    keystore: KeystoreOpt = None,
    lineage: LineageOpt = None,
    report: ReportOpt = None,
    device: DeviceOpt = "cpu",
    block_rows: BlockOpt = 65_536,
    overwrite: OverwriteOpt = False,
    receipts: ReceiptsOpt = None,
    receipt: ReceiptOpt = None,
) -> None:
    """Deterministic subject-disjoint splits; every table's rows follow their subject."""
    from biomask.identity.commands import run_split

    try:
        fractions = [float(x) for x in ratios.split(",") if x.strip()]
    except ValueError:
        raise BiomaskError(f"--ratios {ratios}: give fractions such as 0.8,0.1,0.1") from None
    split_names = [n.strip() for n in names.split(",") if n.strip()]
    opts = _common(
        id_column="",
        template_column=template_column,
        policy=policy,
        keyring=keyring,
        table=table,
        keystore=keystore,
        lineage=lineage,
        report=report,
        device=device,
        block_rows=block_rows,
        overwrite=overwrite,
        receipt=receipt,
    )
    rep = run_split(
        opts,
        input,
        output,
        by=by,
        ratios=fractions,
        names=split_names,
        leakage_threshold=leakage_threshold,
        merge_leaks=merge_leaks,
    )
    c = _console()
    per = ", ".join(
        f"{n} {rep['subjects_per_split'][n]:,} ({rep['ratios_achieved'][n]:.1%})"
        for n in split_names
    )
    c.print(f"split {rep['subjects']:,} subjects by {by}: {per}")
    for n in split_names:
        rows = ", ".join(f"{t} {k:,}" for t, k in rep["rows_per_split"][n].items())
        c.print(f"  {n}: {rows}")
    if rep["leaked_pairs"] is not None:
        c.print(
            f"  leakage at cosine >= {leakage_threshold}: {rep['leaked_pairs']:,} pairs across "
            f"splits, {rep['leaked_subjects']:,} subjects; moved by merge: "
            f"{rep['subjects_moved_by_merge']:,} (pairs: {rep['leaks_output']})"
        )
    _tail(c, rep, receipts)


def register(app: typer.Typer) -> None:
    """Add ``identity`` and ``split`` to the main command."""
    app.add_typer(identity_app, name="identity")
    app.command("split")(split_cmd)
