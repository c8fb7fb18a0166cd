"""The one typed configuration of the pipeline.

Loaded from a YAML file in ``configs/`` plus repeatable ``--set section.key=value`` overrides.
Every section forbids unknown keys, so a typo fails before anything runs with a message that
names the key (``train.batch_size: Input should be a valid integer``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from cerebro_core.config_yaml import ConfigError, expand_env, format_errors, apply_overrides


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


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
    disallowed_header_directives: list[str] = Field(default_factory=list)
    extract_exif: bool = Field(True, description="keep each original's EXIF (time, GPS, camera) in its sample's "
                                                 "json: re-indexed scrapes are filtered by it")


class AugmentConfig(_Section):
    """open_clip's ``AugmentationCfg`` (training transform); the defaults are open_clip's."""

    scale: tuple[float, float] = Field((0.9, 1.0), description="RandomResizedCrop area range")
    ratio: Optional[tuple[float, float]] = None
    color_jitter: Optional[float | tuple[float, float, float] | tuple[float, float, float, float]] = None
    re_prob: Optional[float] = Field(None, ge=0, le=1, description="random erasing (use_timm)")
    re_count: Optional[int] = Field(None, ge=1)
    use_timm: bool = Field(False, description="timm transform (random erasing); no flips, as open_clip")
    color_jitter_prob: Optional[float] = Field(None, ge=0, le=1)
    gray_scale_prob: Optional[float] = Field(None, ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("must be (low, high) with 0 < low <= high <= 1")
        return v

    @model_validator(mode="after")
    def _open_clip_applies_it(self) -> "AugmentConfig":
        # open_clip's own (non-timm) transform silently ignores or asserts on these: fail here
        if not self.use_timm:
            if self.color_jitter_prob and not (isinstance(self.color_jitter, tuple) and len(self.color_jitter) == 4):
                raise ValueError("color_jitter: must be 4 values (brightness, contrast, saturation, hue) "
                                 "when color_jitter_prob is set")
            if self.color_jitter is not None and not self.color_jitter_prob:
                raise ValueError("color_jitter: open_clip applies it only with color_jitter_prob (or use_timm)")
            for k in ("ratio", "re_prob", "re_count"):
                if getattr(self, k) is not None:
                    raise ValueError(f"{k}: open_clip applies it only with use_timm: true")
        return self

    def open_clip_cfg(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


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


class SourceConfig(_Section):
    name: str
    path: str = Field(description="folder, webdataset shard pattern, or URL list")
    kind: Literal["folder", "webdataset", "url_list"] = "folder"
    labels: str | None = Field(None, description="optional labels CSV (evaluation only)")


class LabellerConfig(_Section):
    """How the teacher's class probabilities become pseudo-captioned images."""

    threshold: float = Field(0.5, ge=0, le=1, description="keep an image when its top class probability ≥ this")
    per_class_top_k: int = Field(100, ge=1, description="at most this many images per predicted class (balance)")
    caption_templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a {} in the wild.", "a wildlife photo of a {}."],
        description="captions of the selected images: one template per image, in turn")


class ReplayStudent(_Section):
    """The default student: starts from the teacher's weights and trains on with the pretraining
    objective (contrastive, both towers) on the pretraining pairs mixed with the pseudo-captioned
    images (replay keeps what pretraining learnt), for a fixed ``budget`` of samples."""

    kind: Literal["replay"] = "replay"
    budget: float = Field(0.2, gt=0, le=4, description="samples through forward+backward per iteration, "
                                                       "in pretrain-equivalents (÷ the pretraining run's samples)")
    lr_scale: float = Field(0.5, gt=0, le=10, description="peak learning rate = lr_scale × train.lr (cosine)")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="share of the student's steps spent warming up")
    augment: Optional[AugmentConfig] = Field(None, description="the student's training view; None: train.augment")


class ScratchStudent(_Section):
    """Noisy student: each iteration a new model from random weights, pretrained (``train.*``) on
    the pairs plus the pseudo-captioned images. Measured best on the CIFAR protocol, at 1 pretrain-
    equivalent per iteration plus ``folds`` fold students per re-labelling (``cerebro plan``)."""

    kind: Literal["scratch"] = "scratch"
    folds: int = Field(2, ge=0, le=16, description="K ≥ 2: iterations after the first are labelled out of fold — "
                                                   "K more students, each trained without one fold of the pool "
                                                   "(by image hash), label that fold; 0: the latest student labels")

    @field_validator("folds")
    @classmethod
    def _folds_ok(cls, v: int) -> int:
        if v == 1:
            raise ValueError("0 (off) or at least 2 folds")
        return v


Student = Annotated[Union[ReplayStudent, ScratchStudent], Field(discriminator="kind")]

class AdaptConfig(_Section):
    iterations: int = Field(3, ge=1, le=100)
    sources: list[SourceConfig] = Field(default_factory=list, description="unlabelled wildlife sources")
    validation_source: Optional[SourceConfig] = Field(
        None, description="labelled folder used for model selection (never trained on)")
    test_source: Optional[SourceConfig] = Field(
        None, description="labelled folder reported only: nothing selects or trains on it")
    general_pairs: Optional[str] = Field(
        None, description="webdataset shards (glob) of general image-text pairs for the forgetting check")
    vocabulary: Optional[str] = Field(None, description="class names (.txt/.csv/.json) or captions (.txt)")
    vocabulary_kind: Literal["names", "captions"] = "names"
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a wildlife photo of a {}.", "a close-up photo of a {}."],
        description="zero-shot prompts per class: the teacher's labels and the measured top-1")
    labeller: LabellerConfig = Field(default_factory=LabellerConfig)
    student: Student = Field(default_factory=ReplayStudent)
    pairs: Optional[str] = Field(
        None, description="the download output (or its manifest.json) with the pretraining pairs the student "
                          "replays; default: this config's download output")
    early_stop: bool = Field(True, description="stop when the validation metric falls")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _student_by_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            st = data.get("student")
            if isinstance(st, str):  # --set adapt.student=scratch
                data = {**data, "student": {"kind": st}}
            elif isinstance(st, dict) and "kind" not in st:  # --set adapt.student.budget=0.1: the default kind
                data = {**data, "student": {"kind": "replay", **st}}
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
    kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq", "ivfpq_disk"] = "auto"
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
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        data = loaded
    data = expand_env(apply_overrides(data, list(overrides or [])))  # --set values may use ${VAR} too
    try:
        return CerebroConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None
