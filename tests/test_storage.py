"""Storage round trips through fsspec: a local folder and s3:// on moto's S3 server (loopback)."""

from __future__ import annotations

import os

import pytest

from cerebro_core.config import StorageConfig
from cerebro_core.storage import Storage, join


def roundtrip(st: Storage, root: str, tmp_path):
    assert not st.exists(join(root, "a/b.json"))
    st.write_json(join(root, "a/b.json"), {"x": [1, 2], "y": "z"})
    assert st.read_json(join(root, "a/b.json")) == {"x": [1, 2], "y": "z"}
    payload = os.urandom(3 * 2**20 + 17)  # > one multipart chunk on S3
    st.write_bytes(join(root, "a/blob.bin"), payload)
    assert st.read_bytes(join(root, "a/blob.bin")) == payload and st.size(join(root, "a/blob.bin")) == len(payload)
    local = tmp_path / "up.txt"
    local.write_text("hello")
    st.put_file(local, join(root, "a/c/up.txt"))
    st.get_file(join(root, "a/c/up.txt"), tmp_path / "down.txt")
    assert (tmp_path / "down.txt").read_text() == "hello"
    assert [p.rsplit("/", 1)[-1] for p in st.glob(join(root, "a/*.json"))] == ["b.json"]
    assert sorted(p.rsplit("/", 1)[-1] for p in st.walk_files(join(root, "a"))) == ["b.json", "blob.bin", "up.txt"]
    with st.open(join(root, "a/b.json"), "rb") as f:
        assert f.read(1) == b"{"
    st.rm(join(root, "a/blob.bin"))
    assert not st.exists(join(root, "a/blob.bin"))
    # overwrite is atomic and complete
    st.write_text(join(root, "a/b.json"), "v2")
    assert st.read_text(join(root, "a/b.json")) == "v2"


def test_local_roundtrip(tmp_path):
    roundtrip(Storage(), str(tmp_path / "root"), tmp_path)
    leftovers = [p for p in (tmp_path / "root").rglob(".tmp-*")]
    assert leftovers == []


def test_local_atomic_write_leaves_old_file_on_failure(tmp_path):
    st = Storage()
    target = str(tmp_path / "f.json")
    st.write_json(target, {"v": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("mid-write failure")

    with pytest.raises(RuntimeError):
        st.write_json(target, {"v": Boom()})
    assert st.read_json(target) == {"v": 1}


def test_s3_roundtrip_config_credentials(s3_env, tmp_path, monkeypatch):
    # credentials and endpoint from the config only
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    st = Storage(StorageConfig(endpoint_url=s3_env["endpoint"], access_key_id="testing",
                               secret_access_key="testing", region="us-east-1"))
    roundtrip(st, f"s3://{s3_env['bucket']}/run1", tmp_path)


def test_s3_roundtrip_env_credentials(s3_env, tmp_path, monkeypatch):
    # the usual AWS env vars, endpoint from AWS_ENDPOINT_URL
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["endpoint"])
    st = Storage(StorageConfig())
    roundtrip(st, f"s3://{s3_env['bucket']}/run2", tmp_path)
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_env["endpoint"]).list_objects_v2(
        Bucket=s3_env["bucket"], Prefix="run2/")["Contents"]]
    assert "run2/a/b.json" in keys


def test_s3_input_fingerprint_follows_its_content(s3_env, monkeypatch):
    """A cached stage's S3 input is fingerprinted by its listing's keys, sizes and ETags: the
    same key rewritten with other bytes of the same size is a new input (it was the URL string,
    so a changed S3 source reused a stale result)."""
    from tasks.caching import path_fingerprint

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["endpoint"])
    st = Storage(StorageConfig())
    base = f"s3://{s3_env['bucket']}/scrape"
    st.write_bytes(f"{base}/a.jpg", b"first image")
    st.write_bytes(f"{base}/sub/b.jpg", b"other image")
    one = path_fingerprint(base, st)
    assert one == path_fingerprint(base + "/", st) and not one.startswith(("s3:", "missing:"))
    st.write_bytes(f"{base}/a.jpg", b"FIRST IMAGE")  # same key, same size, other bytes
    two = path_fingerprint(base, st)
    assert two != one and path_fingerprint(base, st) == two
    st.write_bytes(f"{base}/sub/c.jpg", b"new")
    assert path_fingerprint(base, st) != two
    assert path_fingerprint(f"{base}/a.jpg", st) != path_fingerprint(f"{base}/sub/b.jpg", st)
    assert path_fingerprint(f"s3://{s3_env['bucket']}/nothing-here", st).startswith("missing:")
