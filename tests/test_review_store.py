"""Verifications as data (issue #34): append-only batch files in the storage root, local or S3;
the latest per content hash wins; CSV out and in, with cells no spreadsheet evaluates; and a
writer killed by SIGKILL never loses a verification it acknowledged, even with another writing
at once."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from cerebro_core.review.csvio import read_csv, safe_cell, write_csv
from cerebro_core.review.store import (SPECIAL, ReviewError, Verification, append, read_log, verified_labels)


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_latest_verification_per_item_wins_and_each_batch_is_one_file(tmp_path):
    root = str(tmp_path / "data")
    a, b = sha("a"), sha("b")
    append(root, [Verification(a, "deer", "2024-05-01T10:00:00+00:00", "ana"),
                  Verification(b, "empty", "2024-05-01T10:00:01+00:00")])
    append(root, [Verification(a, "horse", "2024-05-01T12:00:00+02:00", "ben")])  # 10:00 UTC too: the later file wins
    append(root, [Verification(a, "cat", "2024-05-01T09:00:00+00:00", "cy")])  # written last, but older
    files = sorted(p.name for p in (tmp_path / "data" / "reviews" / "verifications").iterdir())
    assert len(files) == 3 and all(f.endswith(".jsonl") for f in files)
    log = read_log(root)
    assert [v.label for v in log.all()] == ["cat", "deer", "horse", "empty"]  # by time, then by file
    assert verified_labels(root) == {a: "horse", b: "empty"}
    assert log.refresh() == 0  # nothing new is read twice
    append(root, [Verification(b, "person", "2030-01-01T00:00:00+00:00")])
    assert log.refresh() == 1 and log.latest()[b].label == "person"
    assert verified_labels(str(tmp_path / "nothing-yet")) == {}


def test_verifications_live_in_an_s3_storage_root(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["endpoint"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    root = f"s3://{s3_env['bucket']}/cerebro"
    append(root, [Verification(sha("x"), "frog", "2024-01-01T00:00:00+00:00", "ana")])
    append(root, [Verification(sha("x"), "unknown", "2024-01-02T00:00:00+00:00")])
    assert verified_labels(root) == {sha("x"): "unknown"}


def test_csv_round_trip_keeps_everything_and_neutralises_formulas(tmp_path):
    vocab = ["deer", "horse"]
    recs = [Verification(sha("a"), "deer", "2024-05-01T10:00:00.000+00:00", "=HYPERLINK(\"http://x\")", "a.jpg"),
            Verification(sha("b") + "@2.000", "empty", "2024-05-01T10:00:01.000+00:00", "@ana", "-clip.mp4"),
            Verification(sha("c"), "person", "2024-05-01T10:00:02.000+00:00", "+1 555", None),
            Verification(sha("d"), "horse", "2024-05-01T10:00:03.000+00:00", "-ben", "\rx.jpg")]
    text = write_csv(recs)
    for line in text.splitlines()[1:]:
        for cell in line.split(","):
            assert not cell.lstrip('"').startswith(("=", "+", "-", "@", "\t", "\r")), line
    assert safe_cell("-2.33") == "-2.33" and safe_cell("-2.33+A1") == "'-2.33+A1" and safe_cell(7) == 7
    back = read_csv(text, vocab, lambda u: None)
    assert back == recs
    root = str(tmp_path / "other")  # into another store and out again: the same file
    append(root, back)
    assert write_csv(read_log(root).all()) == text


def test_csv_import_names_items_by_uri_and_refuses_bad_rows_whole():
    vocab = ["deer", "horse"]
    names = {"cams/a0.jpg": sha("a0")}
    got = read_csv("uri,label\ncams/a0.jpg,horse\n", vocab, names.get, default_reviewer="tool")
    assert len(got) == 1 and got[0].sha256 == sha("a0") and got[0].reviewer == "tool" and got[0].time
    for text, msg in (("uri,label\ncams/zz.jpg,deer\n", "row 2: uri: no indexed item"),
                      (f"sha256,label\n{sha('a')},deer\n{sha('b')},unicorn\n", "row 3: label: unknown 'unicorn'"),
                      ("sha256,label\nnot-a-hash,deer\n", "row 2: sha256: not a content hash"),
                      (f"sha256,label,time\n{sha('a')},deer,yesterday\n", "row 2: time: not an ISO 8601"),
                      ("name,species\nx,deer\n", "CSV header must name label")):
        with pytest.raises(ReviewError, match=msg):
            read_csv(text, vocab, names.get)
    assert {"empty", "person", "unknown"} == set(SPECIAL)


WRITER = """
import sys, hashlib
from cerebro_core.review.store import Verification, append, now
root, who = sys.argv[1], sys.argv[2]
i = 0
while True:
    h = hashlib.sha256(f"{who}-{i}".encode()).hexdigest()
    append(root, [Verification(h, "deer", now(), who)])
    print(i, flush=True)  # acknowledged: the batch file is in place
    i += 1
"""


def test_sigkill_never_loses_an_acknowledged_verification(tmp_path):
    """Two writers at once, each killed by SIGKILL wherever it is (mid-write or between writes):
    every verification either printed as acknowledged is read back, and a torn write is no batch."""
    root = str(tmp_path / "data")
    procs = {who: subprocess.Popen([sys.executable, "-c", WRITER, root, who], stdout=subprocess.PIPE, text=True)
             for who in ("w1", "w2")}
    acked: dict[str, int] = {}
    try:
        for who, p in procs.items():
            for _ in range(25):  # 25 acknowledged writes each, the other writing meanwhile
                acked[who] = int(p.stdout.readline())
        time.sleep(0.05)
    finally:
        for p in procs.values():
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    assert all(p.returncode == -signal.SIGKILL for p in procs.values())
    folder = tmp_path / "data" / "reviews" / "verifications"
    (folder / ".tmp-torn").write_text('{"sha256": "ab')  # what a write cut short leaves behind
    got = verified_labels(root)
    for who, last in acked.items():
        want = {hashlib.sha256(f"{who}-{i}".encode()).hexdigest() for i in range(last + 1)}
        assert want <= set(got), f"{who}: lost {len(want - set(got))} acknowledged verification(s)"
    assert set(got.values()) == {"deer"}
