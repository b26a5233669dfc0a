#!/usr/bin/env bash
# A short demo: start a counting program, checkpoint it (it stops), restore
# it, and show that it continued from where it was.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
bin=target/debug/cryopod
work=$(mktemp -d /tmp/cryopod-demo.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A bash loop that counts once per 0.2 s into a file.
bash -c 'n=0; while :; do n=$((n+1)); echo "count $n"; sleep 0.2; done' >"$work/log" 2>&1 </dev/null &
pid=$!
sleep 1.2
echo "== running as pid $pid; last line: $(tail -n1 "$work/log")"
$bin checkpoint --pid "$pid" -o "$work/image"
wait "$pid" 2>/dev/null || true
before=$(tail -n1 "$work/log")
echo "== checkpointed; the program is gone (kill -0: $(kill -0 "$pid" 2>&1 || true))"
$bin inspect "$work/image" | head -n 4
sleep 1
echo "== one second later, still: $before"
$bin restore "$work/image" --detach
sleep 1.2
echo "== restored as pid $pid; it went on counting:"
tail -n 4 "$work/log"
n1=${before#count }
n2=$(tail -n1 "$work/log"); n2=${n2#count }
if [ "$n2" -gt "$n1" ]; then echo "== demo OK: count went from $n1 to $n2 without starting over"; else echo "== demo FAILED"; exit 1; fi
