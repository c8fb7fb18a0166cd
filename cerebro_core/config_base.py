"""The config's building blocks shared by its sections' modules: the strict section base, open_clip's
augmentation, a data source. ``cerebro_core.config`` re-exports them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


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


class SourceConfig(_Section):
    name: str
    path: str = Field(description="folder, webdataset shard pattern, or URL list")
    kind: Literal["folder", "webdataset", "url_list"] = "folder"
    labels: str | None = Field(None, description="optional labels CSV (evaluation only)")
    metadata: str | None = Field(None, description="the collection's own COCO Camera Traps / COCO / iNat JSON (path or "
                                                   "URL): its files, labels, datetime, location (camera) and seq_id")
    detections: str | None = Field(None, description="MegaDetector batch output for the source's images (path or URL): "
                                                     "frames without a detection are empty, person detections flag people")
    detection_threshold: float = Field(0.2, ge=0, le=1, description="a detection counts from this confidence on")
    timezone: str | None = Field(None, description="the cameras' time zone (IANA, e.g. Africa/Dar_es_Salaam): their "
                                                   "naive times (EXIF, metadata) are read in it; default: naive times "
                                                   "stay naive and are compared as local wall-clock times")
    layout: str | None = Field(None, description="what the path components under the folder are, ending in {file}: "
                                                 "'{camera}/{label}/{file}' (camtrapR, Timelapse: Station/Species/IMG.JPG), "
                                                 "'{camera}/*/{file}' (* ignored); default: a first folder is the label")

    @field_validator("timezone")
    @classmethod
    def _zone_ok(cls, v: str | None) -> str | None:
        if v is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"not an IANA time zone: {v!r} (e.g. Africa/Dar_es_Salaam, UTC)") from None
        return v

    @field_validator("layout")
    @classmethod
    def _layout_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.strip("/").split("/")
        if parts[-1] != "{file}" or any(p not in ("{camera}", "{label}", "*") for p in parts[:-1]) or \
                any(parts.count(t) > 1 for t in ("{camera}", "{label}")):
            raise ValueError("path components '{camera}', '{label}' (each at most once) or '*', then '{file}': "
                             f"got {v!r}")
        return "/".join(parts)
