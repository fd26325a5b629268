#!/bin/sh
# PID 1 of the aarch64 VM (scripts/aarch64-vm): runs bottle-init as PID 1 of a PID namespace
# in api-only mode with the probe as its child, checks the upstream saw the real token and no
# output did, prints VMCHECK lines on the serial console, then powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ip link set lo up
say() { echo "VMCHECK $*"; }
echo "VMINFO $(uname -srm); $(grep -c ^processor /proc/cpuinfo) cpus"
echo "VMINFO $(grep -h '^CONFIG_COMPAT=' /boot/config-* 2>/dev/null)"

# Control: AArch32 code runs on this kernel at all, so the SIGSYS below is the filter's doing.
if [ "$(/vm/compat-probe)" = "compat ok" ]; then say ok "AArch32 programs run without the filter (control)"
else say FAIL "AArch32 programs run without the filter (control)"; fi

python3 /vm/mock.py 2>/tmp/mock.err &
i=0; while [ ! -e /tmp/mock.ready ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /tmp/mock.ready ] || { say FAIL "the mock started"; cat /tmp/mock.err; }

TOKEN="$(cat /vm/token)"
unshare --pid --fork --mount-proc env -i PATH="$PATH" \
    CLAUDE_CODE_OAUTH_TOKEN="$TOKEN" BOTTLE_EGRESS="$(cat /vm/egress)" BOTTLE_USER=1000 \
    BOTTLE_UPSTREAM=https://localhost:8443 BOTTLE_UPSTREAM_CA=/vm/ca.pem BOTTLE_LOG=info \
    /vm/bottle-init -- python3 /vm/probe.py >/tmp/probe.out 2>/tmp/init.err
rc=$?
cat /tmp/probe.out
sed 's/^/VMLOG /' /tmp/init.err
if [ $rc = 0 ]; then say ok "bottle-init as PID 1 exited 0 (the probe's status)"
else say FAIL "bottle-init as PID 1 exited 0 (the probe's status) (exit $rc)"; fi
if grep -qxF "POST /v1/messages authorization=Bearer $TOKEN" /tmp/mock.log; then
    say ok "the upstream received the real token"
else say FAIL "the upstream received the real token"; sed 's/authorization=.*/authorization=<hidden>/' /tmp/mock.log; fi
if grep -qF "$TOKEN" /tmp/probe.out /tmp/init.err; then say FAIL "the token is in no output"
else say ok "the token is in no output"; fi
echo VMEND
sync
echo o >/proc/sysrq-trigger
sleep 60
