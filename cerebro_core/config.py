"""The one typed configuration of the pipeline.

Loaded from a YAML file in ``configs/`` plus repeatable ``--set section.key=value`` overrides.
Every section forbids unknown keys, so a typo fails before anything runs with a message that
names the key (``train.batch_size: Input should be a valid integer``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from cerebro_core.config_adapt import (AdaptConfig, LabellerConfig, ReplayStudent, ScratchStudent, Student,  # noqa: F401
                                      TopKLabeller)
from cerebro_core.config_base import AugmentConfig, SourceConfig, _Section  # noqa: F401
from cerebro_core.config_yaml import ConfigError, expand_env, format_errors, apply_overrides, read_yaml


class StorageConfig(_Section):
    root: str | None = Field(
        None, description="fsspec URL where stage outputs go (default: $CEREBRO_HOME/data)"
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto, ...); default: AWS or $AWS_ENDPOINT_URL"
    )
    access_key_id: str | None = Field(None, description="default: the usual AWS env vars / profile")
    secret_access_key: SecretStr | None = None
    region: str | None = None
    anon: bool = False
    part_size: int = Field(4 * 2**20, ge=4096, le=2**30, description="bytes per part of a published search version")
    lock_wait_s: float = Field(3600, ge=0, description="how long a publish or gc waits for another's lock (cerebro_core/lease.py)")
    lock_ttl_s: float = Field(120, ge=3, description="an S3 lock not renewed for this long is taken over")


class TrackingConfig(_Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite under $CEREBRO_HOME",
    )
    experiment: str = "cerebro"
    model_name: str = Field("cerebro-clip", description="registered model name of the CLIP versions")
    search_model_name: str = Field("cerebro-search", description="registered pyfunc search model")
    lock_wait_s: float = Field(120, ge=0, description="how long to wait for another process's lock on the sqlite store")


class DownloadConfig(_Section):
    url_list: str | None = Field(None, description="URL list: raw CC3M TSV, csv/tsv/parquet, iNat CSV")
    input_format: Literal["auto", "cc3m_tsv", "csv", "tsv", "parquet", "txt"] = "auto"
    url_col: str = "url"
    caption_col: str | None = "caption"
    output: str | None = Field(None, description="output folder URL (default: <storage.root>/shards)")
    image_size: int = Field(256, ge=8, le=4096)
    resize_mode: Literal["center_crop", "keep_ratio", "border", "no"] = "center_crop"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    processes: int = Field(1, ge=1)
    threads: int = Field(16, ge=1)
    samples_per_shard: int = Field(10000, ge=1)
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0)
    incremental: bool = True
    retry_failed: bool = False
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="decompression-bomb limit (PIL's default); larger images fail"
    )
    empty_captions: Literal["keep", "drop"] = Field(
        "drop", description="rows with an empty caption (when the list has captions): drop (counted) or keep"
    )
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that refuse an image (img2dataset's default: sites' AI and "
                    "index opt-outs, counted as disallowed_by_robots); [] downloads regardless")
    extract_exif: bool = Field(True, description="keep each original's EXIF (time, GPS, camera) in its sample's "
                                                 "json: re-indexed scrapes are filtered by it")


class ComputeConfig(_Section):
    """The cluster shape of every torchrun job: pretraining, adapt's students and labelling, index
    and reindex embedding. Every node runs the same command with its own ``node_rank``."""

    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when visible, else CPU")
    nproc_per_node: int | Literal["auto"] = Field("auto", description="auto: one per visible GPU (1 on CPU)")
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0, description="0 owns the MLflow run and publishes; others only compute")
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    rdzv_endpoint: str | None = Field(None, description="host:port on node 0; required when nnodes > 1")
    rdzv_timeout_s: int = Field(900, ge=1, description="a node waiting longer than this for its peers fails")
    collective_timeout_s: int = Field(
        1800, ge=1, description="a collective (all-reduce, barrier) blocked longer than this fails: a lost peer")

    @model_validator(mode="after")
    def _shape_ok(self) -> "ComputeConfig":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank: {self.node_rank} is not below nnodes ({self.nnodes})")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("rdzv_endpoint: required when nnodes > 1 (host:port of node 0)")
        return self


_MOVED_TO_COMPUTE = ("nproc_per_node", "nnodes", "node_rank", "rdzv_backend", "rdzv_endpoint")


class TrainConfig(_Section):
    model: str = Field("ViT-B-32", description="open_clip architecture name (random init, always)")
    batch_size: int = Field(480, ge=1, description="per-GPU (per-process) batch size")
    shard_read_retries: int = Field(4, ge=0, description="a failed shard read is retried this often, with backoff")
    max_lost_share: float = Field(0.05, ge=0, le=1, description="the run fails past this share of shards lost")
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(10000, ge=0)
    epochs: int = Field(32, ge=1)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    grad_clip: float | None = Field(None, gt=0)
    accum_steps: int = Field(1, ge=1)
    grad_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile the model's forward on CUDA (first steps compile)")
    workers: int = Field(4, ge=0)
    seed: int = 0
    deterministic: bool = Field(False, description="deterministic kernels: bit-exact resume (slower)")
    checkpoint_every_steps: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    resume: Literal["auto", "never"] = "auto"
    log_every_steps: int = Field(50, ge=1)
    val_fraction: float = Field(0.01, ge=0, lt=1)
    zero_shot_source: str | None = Field(None, description="labelled image folder for zero-shot eval")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in _MOVED_TO_COMPUTE if k in data]
            if moved:
                raise ValueError("; ".join(f"train.{k} moved to compute.{k}" for k in moved))
        return data


class ThreadRunner(_Section):
    kind: Literal["threads"] = "threads"
    max_workers: Optional[int] = Field(None, ge=1, description="None: Prefect's default")


class DaskRunner(_Section):
    kind: Literal["dask"] = "dask"
    address: Optional[str] = Field(None, description="a running Dask scheduler (tcp://host:8786); None: a local "
                                   "cluster of n_workers processes for the run")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)


TaskRunner = Annotated[Union[ThreadRunner, DaskRunner], Field(discriminator="kind")]


class IndexConfig(_Section):
    sources: list[SourceConfig] = Field(default_factory=list)
    shards: int = Field(1, ge=1, le=65536, description="index shards, each built as its own task (contiguous ids)")
    shard_runner: TaskRunner = Field(default_factory=ThreadRunner, description="the Prefect task runner the "
                                     "shard builds are mapped on: threads here, or Dask (prefect-dask)")
    kind: str = Field("auto", description="the FAISS index kind (cerebro_core.ann.kinds): auto, or one by name")
    recall_target: float = Field(0.95, gt=0, le=1)
    memory_budget_mb: int = Field(4096, ge=1)
    video_frame_interval: float = Field(2.0, gt=0)
    batch_size: int = Field(256, ge=1)
    model_alias: str = "champion"
    vocabulary: Optional[str] = Field(None, description="species names for each item's zero-shot species tag "
                                      "(.txt/.csv/.json); default: adapt.vocabulary when it is a names list")
    sequence_gap_s: float = Field(60.0, gt=0, description="one camera's items at most this far apart in time are "
                                  "one sequence (a burst, an event)")
    duplicate_threshold: float = Field(0.97, gt=0, le=1, description="embedding cosine at which two items are "
                                       "near-duplicates")
    evaluation_source: Optional[SourceConfig] = Field(None, description="a labelled folder: each published version "
                                                      "records species-query mAP@10 / P@10 on it (not indexed)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from cerebro_core.ann.kinds import KINDS  # the registry is the list of kinds

        if v != "auto" and v not in KINDS:
            raise ValueError(f"unknown index kind {v!r}; known: auto, {', '.join(KINDS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _runner_by_name(cls, data: Any) -> Any:
        r = data.get("shard_runner") if isinstance(data, dict) else None
        if isinstance(r, str):  # --set index.shard_runner=dask
            data = {**data, "shard_runner": {"kind": r}}
        elif isinstance(r, dict) and "kind" not in r:  # --set index.shard_runner.address=tcp://…: Dask's keys
            data = {**data, "shard_runner": {"kind": "dask" if set(r) & {"address", "n_workers", "threads_per_worker"}
                                             else "threads", **r}}
        return data


LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: float = Field(10.0, gt=0)
    max_query_chars: int = Field(1000, ge=1, le=100_000)
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK),
        description="Host header values the API answers (DNS-rebinding guard); add the public name when serving "
                    "beyond this machine")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed cross-site; none "
                                                                      "by default")
    token: SecretStr | None = Field(
        None, description="bearer token every request but the page itself must carry (header "
                          "'Authorization: Bearer …' or the page's cookie); required when host is not loopback. "
                          "Pass it as --set serve.token=… or ${VAR} in YAML, not in a committed file")
    max_query_pixels: int = Field(16_000_000, ge=10_000, description="largest query image (width × height) "
                                  "decoded; JPEGs are decoded at a reduced scale")
    max_concurrent_images: int = Field(2, ge=1, description="image queries decoded and encoded at once; "
                                       "more get 503 with Retry-After")
    read_only: bool = Field(False, description="refuse verifications (POST /verify answers 403)")
    signed_link_ttl_s: int = Field(86_400, ge=60, le=30 * 86_400, description="with a token: how long the links of "
                                                                           "/export?format=urls stay valid")
    show_people: bool = Field(False, description="list frames with people (the source's human category, or verified "
                                                 "person); camera-trap practice keeps them out of results")

    @field_validator("token")
    @classmethod
    def _token_ok(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            t = v.get_secret_value()
            if "${" in t:
                raise ValueError("an unexpanded ${VAR}: set the variable or pass --set serve.token=…")
            if len(t) < 16:
                raise ValueError("at least 16 characters")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_ok(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one host name")
        return v


class CerebroConfig(_Section):
    name: str = "cerebro"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("must be a non-empty name without '/'")
        return v

    def section_hash(self, section: str) -> str:
        """Stable fingerprint of one section (for caching and tagging)."""
        data = getattr(self, section).model_dump(mode="json")
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def masked(self) -> dict[str, Any]:
        """The config as plain data with secrets masked (SecretStr dumps as '**********')."""
        return json.loads(self.model_dump_json())


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> CerebroConfig:
    """Load a YAML config (or the defaults when path is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)  # one line for a directory, a binary file, an alias bomb, …
    data = expand_env(apply_overrides(data, list(overrides or [])))  # --set values may use ${VAR} too
    try:
        return CerebroConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, data)) from None
