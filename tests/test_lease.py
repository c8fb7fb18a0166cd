"""The lock in storage (cerebro_core/lease.py) that serialises publishes and gc's deletions: one
holder at a time on a local folder (flock, dropped when its process dies) and on S3 (a lease object
created with a conditional PUT, renewed, taken over only once it has gone unrenewed for its ttl)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import REPO


HOLD = """
import sys, time
from cerebro_core.lease import lease
from cerebro_core.storage import Storage
with lease(Storage(), sys.argv[1], wait_s=0):
    print("held", flush=True)
    time.sleep(600)
"""


def test_local_lease_excludes_and_dies_with_its_process(tmp_path):
    from cerebro_core.lease import LeaseHeld, lease
    from cerebro_core.storage import Storage

    url = str(tmp_path / "locks" / "m.lease")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        told = []
        with pytest.raises(LeaseHeld, match=f"held by process {proc.pid} on "):
            with lease(Storage(), url, wait_s=0.3, poll_s=0.1, log=told.append):
                pass
        assert told and f"process {proc.pid}" in told[0]
        os.kill(proc.pid, signal.SIGKILL)  # the kernel drops the lock with its process
        proc.wait()
        with lease(Storage(), url, wait_s=5, poll_s=0.1) as held:
            with lease(Storage(), url, wait_s=0) as again:  # re-entrant in its own process
                assert again is held
    finally:
        proc.kill()
        proc.wait()


def test_s3_lease_is_exclusive_renewed_and_taken_over_when_stale(s3_env, monkeypatch):
    from cerebro_core.config import StorageConfig
    from cerebro_core.lease import Lease, LeaseLost, lease
    from cerebro_core.storage import Storage

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    st = Storage(StorageConfig(endpoint_url=s3_env["endpoint"]))
    url = f"s3://{s3_env['bucket']}/locks/m.lease"
    # a holder that stopped renewing (its process was killed): exclusive until its ttl has passed
    dead = Lease(st, url, ttl_s=3)
    assert dead.try_acquire() is None
    other = Lease(st, url, ttl_s=3)
    assert other.try_acquire()["pid"] == os.getpid()  # refused, naming the holder
    with lease(st, url, ttl_s=3, wait_s=30, poll_s=0.3) as taken:  # waits out the ttl, then takes it over
        assert dead._put(IfMatch=dead._etag) is None  # the old holder can no longer renew
        # a live holder renews: past its ttl it is still held
        time.sleep(4)
        assert Lease(st, url, ttl_s=3).try_acquire()["token"] == taken.holder["token"]
        taken.check()
    assert not st.exists(url)  # released
    dead._etag, dead.lost = "x", "the lease was taken over"
    with pytest.raises(LeaseLost):
        dead.check()


def test_reindex_deployment_runs_one_at_a_time():
    deps = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deps["reindex"]["concurrency_limit"]["limit"] == 1
