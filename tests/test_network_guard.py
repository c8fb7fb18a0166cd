"""The network guard: `make test` runs every test not marked ``network`` under
scripts/loopback-only.sh, in a network namespace whose only interface is loopback. There, any
other address fails at once and 127.0.0.1 works. CI sets CEREBRO_REQUIRE_NETWORK_GUARD=1, so a run
that lost the guard fails here instead of passing unguarded; elsewhere, outside it, this skips."""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest

# never routed: TEST-NET-1, the cloud metadata service (botocore's credential look-up), IPv6 documentation
ELSEWHERE = [("192.0.2.1", 80), ("169.254.169.254", 80), ("2001:db8::1", 443)]


@pytest.fixture(autouse=True)
def _guarded():
    if os.environ.get("CEREBRO_NETWORK_GUARD") == "loopback":
        return
    msg = "not under scripts/loopback-only.sh (CEREBRO_NETWORK_GUARD unset); `make test` runs this inside it"
    if os.environ.get("CEREBRO_REQUIRE_NETWORK_GUARD") == "1":
        pytest.fail(msg + ", and CEREBRO_REQUIRE_NETWORK_GUARD=1")
    pytest.skip(msg)


def test_loopback_is_the_only_interface():
    assert [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.mark.parametrize("addr", ELSEWHERE, ids=[a for a, _ in ELSEWHERE])
def test_other_addresses_fail_at_once(addr):
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    t0 = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(OSError) as exc:
        s.settimeout(5)
        s.connect(addr)
    assert exc.value.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL), exc.value
    assert time.monotonic() - t0 < 1, "a refused route answers at once, not by a timeout"


def test_loopback_works():
    with socket.create_server(("127.0.0.1", 0)) as srv, \
            socket.create_connection(srv.getsockname(), timeout=5) as c:
        peer, _ = srv.accept()
        with peer:
            c.sendall(b"ping")
            assert peer.recv(4) == b"ping"
