#!/usr/bin/env bash
# The main job end to end on a generated disk: a small generalized Linux disk, packed the way
# `qemu-img convert -O vpc` packs it (dynamic, size rounded to CHS geometry: Azure refuses it),
# inspected, checked, pre-flighted, converted, checked again, and uploaded to a local Azurite.
# Run through `make demo`, which starts Azurite and sets VHDKIT_AZURITE_BLOB_URL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=demo-out
VHDKIT=${VHDKIT:-.venv/bin/vhdkit}
PY=${PYTHON:-.venv/bin/python}
SAMPLE=$OUT/sample.vhd
FIXED=$OUT/sample-azure.vhd
declare -a SUMMARY=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Run a vhdkit command, show its exit code, and fail the demo if it is not the expected one.
expect() {
    local want=$1; shift
    local status=0
    echo "\$ vhdkit $*"
    "$VHDKIT" "$@" || status=$?
    echo "-> exit $status"
    [ "$status" -eq "$want" ] || { echo "demo: expected exit $want" >&2; exit 1; }
    SUMMARY+=("vhdkit $1: exit $status")
}

rm -rf "$OUT"
mkdir -p "$OUT"

step "1. Generate a 76 MiB Linux disk (GPT: ext4 root, BIOS boot, EFI System Partition; generalized) without mounting anything"
raw=$(PYTHONPATH=. "$PY" fixtures/linux_disks.py "$OUT" generalized-gpt)
echo "$raw"

step "2. Pack it as qemu-img does by default: a dynamic VHD whose size is CHS-rounded"
qemu-img convert -f raw -O vpc "$raw" "$SAMPLE"
rm -f "$raw"
qemu-img info "$SAMPLE" | sed -n '1,4p'

step "3. What is it?"
expect 0 inspect "$SAMPLE"

step "4. Would Azure take it? (no: dynamic, and not a whole number of MiB)"
expect 1 check "$SAMPLE"

step "5. Is the OS inside ready to be provisioned? (read offline: partitions, ext4, fstab, agent)"
expect 0 preflight -v "$SAMPLE"

step "6. Repair: convert to a fixed, whole-MiB VHD (sparse, atomic, verified)"
expect 0 convert "$SAMPLE" "$FIXED" --verify
ls -ls "$FIXED"

step "7. Check the result"
expect 0 check "$FIXED"

if [ -n "${VHDKIT_AZURITE_BLOB_URL:-}" ]; then
    step "8. Upload the original straight from the dynamic VHD (converted on the fly) to Azurite"
    expect 0 upload "$SAMPLE" --emulator "$VHDKIT_AZURITE_BLOB_URL" --container demo \
        --blob sample.vhd --create-container --verify --md5
    step "9. Upload again: the blob already holds everything, so nothing is resent"
    expect 0 upload "$SAMPLE" --emulator "$VHDKIT_AZURITE_BLOB_URL" --container demo \
        --blob sample.vhd
else
    echo "(no Azurite: run 'make demo' to include the upload steps)"
fi

step "Summary"
printf '  %s\n' "${SUMMARY[@]}"
echo "  files: $(ls "$OUT" | tr '\n' ' ')"
