#!/usr/bin/env bash
# Run a command with a private, in-memory Azurite blob server on a free loopback port.
#
# Usage: scripts/with-azurite.sh COMMAND [ARG...]
# The command sees VHDKIT_AZURITE_BLOB_URL=http://127.0.0.1:PORT/devstoreaccount1 and its exit
# status is passed through. Azurite runs in its own process group (setsid), which is killed on
# every exit path, including failing tests and Ctrl-C.
set -euo pipefail
set +m  # no job control: `setsid` then execs in place, so $! is both its PID and its PGID

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AZURITE_BLOB=${AZURITE_BLOB:-$ROOT/node_modules/.bin/azurite-blob}
START_TIMEOUT=${AZURITE_START_TIMEOUT:-30}
PYTHON=${PYTHON:-python3}

die() { echo "with-azurite: $*" >&2; exit 2; }

[ $# -gt 0 ] || die "usage: $0 COMMAND [ARG...]"
[ -x "$AZURITE_BLOB" ] || die "$AZURITE_BLOB not found; run 'make setup' (npm ci) first"

log=$(mktemp "${TMPDIR:-/tmp}/vhdkit-azurite.XXXXXX")
pgid=""

stop_azurite() {
    if [ -n "$pgid" ]; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$pgid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pgid" 2>/dev/null || true
        wait "$pgid" 2>/dev/null || true
        pgid=""
    fi
}
trap 'stop_azurite; rm -f "$log"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

now_ms() { date +%s%3N; }

# The port is free when picked but could be taken before Azurite binds it: retry a few times.
started=$(now_ms)
for attempt in 1 2 3; do
    port=$(free_port)
    setsid "$AZURITE_BLOB" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
        --skipApiVersionCheck --disableTelemetry --silent --loose >"$log" 2>&1 </dev/null &
    pgid=$!
    deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
    while kill -0 "$pgid" 2>/dev/null && ! port_open "$port"; do
        [ "$(now_ms)" -lt "$deadline" ] || break
        sleep 0.1
    done
    if kill -0 "$pgid" 2>/dev/null && port_open "$port"; then
        break
    fi
    if kill -0 "$pgid" 2>/dev/null; then
        stop_azurite
        cat "$log" >&2
        die "Azurite did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT}s"
    fi
    wait "$pgid" 2>/dev/null || true
    pgid=""
    echo "with-azurite: Azurite exited on attempt $attempt (port $port):" >&2
    cat "$log" >&2
    [ "$attempt" -lt 3 ] || die "Azurite failed to start"
done

export VHDKIT_AZURITE_BLOB_URL="http://127.0.0.1:$port/devstoreaccount1"
echo "with-azurite: Azurite blob at $VHDKIT_AZURITE_BLOB_URL (pgid $pgid," \
    "up in $(( $(now_ms) - started )) ms)" >&2

status=0
"$@" || status=$?
exit "$status"
