#!/usr/bin/env bash
# Make sure the system tools the build and tests need are present.
#
# Usage: scripts/ensure-sysdeps.sh APT_PACKAGE...
# Checks each Debian package with dpkg, plus Python's venv support and Node.js/npm (checked as
# commands, because Node often comes from outside Debian, e.g. NodeSource). As root, installs what
# is missing with apt-get; otherwise prints exactly what to install and exits 1.
set -euo pipefail

MIN_NODE_MAJOR=18
PYTHON=${PYTHON:-python3}
missing=()

have_deb() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

if command -v dpkg-query >/dev/null; then
    for pkg in "$@"; do
        have_deb "$pkg" || missing+=("$pkg")
    done
else
    echo "ensure-sysdeps: no dpkg here; make sure these Debian packages' tools are installed: $*" >&2
fi
# Debian splits ensurepip out of python3; without it `python3 -m venv` fails.
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "ensure-sysdeps: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get -q update
        apt-get -q install -y --no-install-recommends "${missing[@]}"
    else
        cat >&2 <<MSG
vhdkit: missing system packages: ${missing[*]}
Install them (as root) and run make again:
    sudo apt-get update && sudo apt-get install -y ${missing[*]}
(Node.js >= ${MIN_NODE_MAJOR} with npm may also come from elsewhere, e.g. NodeSource or nvm.)
MSG
        exit 1
    fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt "$MIN_NODE_MAJOR" ]; then
    echo "vhdkit: Node.js >= ${MIN_NODE_MAJOR} is needed for Azurite; found $(node --version)" >&2
    exit 1
fi
