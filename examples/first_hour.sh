#!/usr/bin/env bash
# Your first hour with biomask, as a script you can read top to bottom and re-run:
# an export -> a drafted policy -> your review -> a masked copy -> an auditor's check ->
# a model trained on it. Every step is one command you would type yourself.
#
#   examples/first_hour.sh [WORKDIR]          (default: biomask-first-hour)
#
# Environment: EXPORT=DIR masks your own export (a directory with one Parquet, CSV or
# JSON Lines file per table) instead of the demo's; ROWS=N sizes the demo;
# BIOMASK_PASSPHRASE protects the new keyring (keep it in your secret store).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-biomask-first-hour}"
ROWS="${ROWS:-1000}"
PYTHON="${PYTHON:-python}"
: "${BIOMASK_PASSPHRASE:?set BIOMASK_PASSPHRASE: it protects the keyring this script creates}"
export BIOMASK_PASSPHRASE
if [ -e "$WORK" ]; then
    echo "first_hour.sh: $WORK exists; give another directory" >&2
    exit 1
fi
mkdir -p "$WORK"

echo "== 1. an export: the demo's subjects and captures (or yours, with EXPORT=DIR)"
if [ -z "${EXPORT:-}" ]; then
    biomask demo --rows "$ROWS" --out "$WORK/demo"
    EXPORT="$WORK/demo/input"
fi

echo "== 2. a draft policy: every column named, keys linked across tables"
biomask policy suggest --input "$EXPORT" --out "$WORK/policy.yaml"

echo "== 3. review: each rule's comment says why; REVIEW marks the guesses"
grep -n "REVIEW:" "$WORK/policy.yaml" || echo "(nothing to review)"
# The demo's one guess is address_city (a city: too coarse to identify anyone alone, but
# a quasi-identifier). Decide, and edit that one line: here, keep it and count it in the
# dossier's k-anonymity. With your own export, edit the lines grep printed.
sed -i.bak -E 's/^( *address_city: *)\{op: redact\}/\1{op: keep, quasi_identifier: true}/' \
    "$WORK/policy.yaml"
biomask policy validate "$WORK/policy.yaml"

echo "== 4. a keyring, and the public key an auditor gets"
biomask keys init --keyring "$WORK/keys.json"
biomask keys export-public --keyring "$WORK/keys.json" --out "$WORK/signer.pem"

echo "== 5. mask every table in one run (lineage goes to $WORK/masked.lineage)"
biomask mask --policy "$WORK/policy.yaml" --input "$EXPORT" --output "$WORK/masked" \
    --keyring "$WORK/keys.json"

echo "== 6. verify, as the auditor does: offline, with the public key"
biomask audit verify "$WORK/masked.lineage" --public-key "$WORK/signer.pem"

echo "== 7. train on the masked captures: templates decrypted in memory only"
"$PYTHON" "$HERE/train_embedding.py" --data "$WORK/masked/captures.parquet" \
    --policy "$WORK/policy.yaml" --keyring "$WORK/keys.json" \
    --lineage "$WORK/masked.lineage" --table captures --epochs 1

echo "== done: open $WORK/masked.lineage/dossier.html for the EU AI Act evidence"
