#!/usr/bin/env bash
# Demo: make a dynamic VHD the way qemu does (size rounded to CHS geometry, so not whole MiB),
# put some data in it, then let vhdkit inspect it and check whether Azure would accept it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=demo-out
VHDKIT=.venv/bin/vhdkit
IMG=$OUT/sample.vhd

step() { printf '\n== %s\n' "$*"; }

mkdir -p "$OUT"
rm -f "$IMG"

step "Create a 100M dynamic VHD with qemu-img (qemu rounds the size to CHS geometry)"
qemu-img create -q -f vpc "$IMG" 100M
qemu-img info "$IMG"

step "Write data at a few places with qemu-io"
for spec in "0xab 1M 3M" "0xcd 40M 1M" "0xef 97M 512k"; do
    read -r pattern offset length <<<"$spec"
    qemu-io -f vpc -c "write -P $pattern $offset $length" "$IMG"
done

step "vhdkit inspect $IMG"
"$VHDKIT" inspect "$IMG"

step "vhdkit check $IMG (expected: exit 1, not ready for Azure)"
status=0
"$VHDKIT" check "$IMG" || status=$?
case $status in
    1) echo "-> check exited 1 as expected: the image is not ready for Azure as it is." ;;
    0) echo "-> check exited 0: unexpected, this image should not be Azure-ready." ;;
    *) echo "-> check exited $status (error)"; exit "$status" ;;
esac

step "Done; files are in $OUT/"
