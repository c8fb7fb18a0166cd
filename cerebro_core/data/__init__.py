"""Data: downloading (img2dataset), shard manifests, safe image decoding, wildlife sources."""
