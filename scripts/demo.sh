#!/usr/bin/env bash
# A short demo of a pod: start a counting service in a pod (its own PIDs,
# host name, network with one address, cgroup, busybox root file system),
# show it working, checkpoint it (the pod is gone), restore it, and show
# that it went on counting from where it was.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
bin=$PWD/target/debug/cryopod
work=$(mktemp -d /tmp/cryopod-demo.XXXXXX)
export CRYOPOD_STATE_DIR=$work/state
pod=demo
cleanup() {
    "$bin" stop --timeout 1 "$pod" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# A tiny root file system: a static busybox and the directories a pod uses.
mkdir -p "$work/rootfs"/{bin,proc,dev,tmp,sys}
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for a in sh sleep echo cat hostname ps ip; do ln -s busybox "$work/rootfs/bin/$a"; done

"$bin" run -d --name "$pod" --rootfs "$work/rootfs" --hostname counter --ip 10.77.99.2/24 --memory 64M -- \
    sh -c 'n=0; while :; do n=$((n+1)); echo "count $n on $(hostname)"; echo $n > /tmp/last; sleep 0.2; done'
sleep 1.2
echo "== pod running:"
"$bin" ps
echo "== inside it:"
"$bin" exec "$pod" -- sh -c 'ps -o pid,args; ip -o -4 addr show eth0'
echo "== its log ends with: $("$bin" logs "$pod" | tail -n1)"
"$bin" checkpoint "$pod" -o "$work/image"
before=$("$bin" inspect "$work/image" >/dev/null && tail -n1 "$work/image/pod.log")
echo "== checkpointed; the pod is gone: $("$bin" ps | tail -n +2 | wc -l) pods running"
sleep 1
echo "== one second later, still: $before"
"$bin" restore "$work/image" --detach
sleep 1.2
echo "== restored; it went on counting:"
"$bin" logs "$pod" | tail -n 4
echo "== /tmp/last in the pod: $("$bin" exec "$pod" -- cat /tmp/last)"
n1=$(echo "$before" | awk '{print $2}')
n2=$("$bin" logs "$pod" | tail -n1 | awk '{print $2}')
"$bin" stop "$pod"
if [ "$n2" -gt "$n1" ]; then echo "== demo OK: count went from $n1 to $n2 without starting over"; else echo "== demo FAILED"; exit 1; fi
