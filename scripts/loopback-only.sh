#!/usr/bin/env bash
# Run a command where no address but loopback can be reached: in a new network namespace
# (`unshare --net`, or `--net --map-root-user` where that is refused) whose only interface, lo, is
# brought up, so the 127.0.0.1 servers the tests start keep working and any other address fails at
# once (ENETUNREACH). The command sees CEREBRO_NETWORK_GUARD=loopback (tests/test_network_guard.py).
# Where no namespace can be made it runs unguarded, saying so in one line; with
# CEREBRO_REQUIRE_NETWORK_GUARD=1 (.ci/run) it fails instead.
#   scripts/loopback-only.sh CMD [ARGS...]
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: scripts/loopback-only.sh CMD [ARGS...]" >&2; exit 2; }

lo_up() {
  if command -v ip >/dev/null 2>&1; then ip link set lo up
  elif command -v ifconfig >/dev/null 2>&1; then ifconfig lo up
  else  # SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP, as ifconfig does
    python3 -c 'import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
f = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", f | 1))'
  fi
}

if [ "${_CEREBRO_LOOPBACK_INSIDE:-}" = 1 ]; then  # second step: inside the new namespace
  unset _CEREBRO_LOOPBACK_INSIDE
  lo_up || { echo "loopback-only.sh: could not bring the loopback interface up" >&2; exit 1; }
  # This host's name keeps resolving to an address that works here (torchrun's multi-node
  # rendezvous advertises it): its addresses are added to lo, which reaches nothing outside.
  if command -v ip >/dev/null 2>&1; then
    for a in $(getent ahosts "$(hostname)" 2>/dev/null | awk '$1 !~ /^(127\.|::1$)/ {print $1}' | sort -u); do
      ip addr add "$a" dev lo 2>/dev/null || true
    done
  fi
  export CEREBRO_NETWORK_GUARD=loopback
  exec "$@"
fi

for ns in "unshare --net" "unshare --net --map-root-user"; do
  if $ns true >/dev/null 2>&1; then
    exec $ns env _CEREBRO_LOOPBACK_INSIDE=1 bash "${BASH_SOURCE[0]}" "$@"
  fi
done
msg="loopback-only.sh: cannot create a network namespace (unshare --net failed)"
if [ "${CEREBRO_REQUIRE_NETWORK_GUARD:-}" = 1 ]; then
  echo "$msg, and CEREBRO_REQUIRE_NETWORK_GUARD=1: not running $1" >&2
  exit 1
fi
echo "$msg: running without the network guard: $*" >&2
unset CEREBRO_NETWORK_GUARD
exec "$@"
