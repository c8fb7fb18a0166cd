"""The ``adapt`` section: the wildlife sources, the labeller and the student, each kind a small class
chosen by its ``kind`` (discriminated unions, as ``cerebro_core.adapt`` looks them up)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union

from pydantic import Field, field_validator, model_validator

from cerebro_core.config_base import AugmentConfig, SourceConfig, _Section


class _LabellerBase(_Section):
    threshold: float = Field(0.5, ge=0, le=1, description="keep an image when its top class probability ≥ this")
    per_class_top_k: int = Field(100, ge=1, description="at most this many images per predicted class (balance)")
    caption_templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a {} in the wild.", "a wildlife photo of a {}."],
        description="captions of the selected images: one template per image, in turn")


class TopKLabeller(_LabellerBase):
    """The default: the model's zero-shot class probabilities; confidence ≥ ``threshold`` and at most
    ``per_class_top_k`` per predicted class."""

    kind: Literal["top_k"] = "top_k"


# The labeller kinds: one small class each, looked up by ``kind`` (cerebro_core.adapt.label.LABELLERS). A kind
# that measured no gain was removed with its numbers kept (docs/BENCHMARKS.md: ``knn``, session 16).
LabellerConfig = TopKLabeller


class ReplayRegime(NamedTuple):
    """What one replay iteration trains: the regime a benchmark must match to speak for a real run."""

    steps: int
    global_batch: int
    pseudo_fraction: float  # of every batch
    passes: float  # over the selection at its cap
    pretrain_equivalents: float  # samples ÷ the pretraining run's samples
    bound: str  # "passes" or "budget": which limit set the steps


class ReplayStudent(_Section):
    """The default student: starts from the teacher's weights and trains on with the pretraining
    objective (contrastive, both towers), every batch an exact ``pseudo_fraction`` of pseudo-captioned
    images and the rest pretraining pairs (replay keeps what pretraining learnt), for ``max_passes``
    over the selection or ``budget`` pretrain-equivalents, whichever is less (``cerebro plan``)."""

    kind: Literal["replay"] = "replay"
    pseudo_fraction: float = Field(0.5, gt=0, lt=1, description="share of every batch taken from the "
                                                                "pseudo-captioned images (the rest: pairs)")
    max_passes: float = Field(4.0, gt=0, le=1000, description="passes over the selection (at its cap) per iteration")
    budget: float = Field(0.2, gt=0, le=4, description="at most this many samples through forward+backward per "
                                                       "iteration, in pretrain-equivalents (÷ the pretraining run's)")
    lr_scale: float = Field(0.5, gt=0, le=10, description="peak learning rate = lr_scale × train.lr (cosine)")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="share of the student's steps spent warming up")
    augment: Optional[AugmentConfig] = Field(None, description="the student's training view; None: train.augment")

    def regime(self, unit_samples: int, n_cap: int, global_batch: int) -> ReplayRegime:
        """Steps of one iteration: ``max_passes`` over a selection of ``n_cap`` images when every
        batch holds ``pseudo_fraction`` of them, unless ``budget`` pretrain-equivalents (of a
        pretraining of ``unit_samples``) come first. The steps follow the selection's cap, not how
        many images the labeller kept, so a control that selects nothing trains the same steps."""
        per_step = self.pseudo_fraction * global_batch
        budget_steps = max(1, round(self.budget * unit_samples / global_batch))
        pass_steps = max(1, math.ceil(self.max_passes * n_cap / per_step)) if n_cap else budget_steps
        steps = min(budget_steps, pass_steps)
        return ReplayRegime(steps, global_batch, self.pseudo_fraction, steps * per_step / max(1, n_cap),
                            steps * global_batch / max(1, unit_samples),
                            "passes" if pass_steps < budget_steps else "budget")

    def planned_samples(self, unit_samples: int, picked: int, pairs: int, epochs: int, global_batch: int,
                        iterations: int) -> tuple[Optional[float], Optional[ReplayRegime]]:
        """(samples one iteration trains on, its regime) for ``cerebro plan``: the regime's steps."""
        reg = self.regime(unit_samples, picked, global_batch) if unit_samples else None
        return (reg.steps * reg.global_batch if reg else None), reg


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

    def planned_samples(self, unit_samples: int, picked: int, pairs: int, epochs: int, global_batch: int,
                        iterations: int) -> tuple[Optional[float], None]:
        """(samples one iteration trains on, no replay regime) for ``cerebro plan``: a new model on the
        pairs + the selection, like the pretraining, and out of fold K more students (each without
        one fold) before each iteration after the first."""
        student = epochs * (pairs + picked)
        folds = self.folds * (iterations - 1) / iterations
        return student + folds * epochs * (pairs + picked * (self.folds - 1) / max(1, self.folds)), None


Student = Annotated[Union[ReplayStudent, ScratchStudent], Field(discriminator="kind")]

class AdaptConfig(_Section):
    iterations: int = Field(3, ge=1, le=100)
    sources: list[SourceConfig] = Field(default_factory=list, description="unlabelled wildlife sources")
    validation_source: Optional[SourceConfig] = Field(
        None, description="labelled folder used for model selection (never trained on)")
    test_source: Optional[SourceConfig] = Field(
        None, description="labelled folder reported only: nothing selects or trains on it")
    annotated_validation: float = Field(
        0.0, ge=0, le=0.5, description="share of the sources' annotated images (a label in the vocabulary, from "
                                       "their metadata JSON or layout) held out by content hash as validation: "
                                       "never pseudo-labelled, never trained on")
    annotated_test: float = Field(0.0, ge=0, le=0.5, description="the same for the reported-only test split")
    general_pairs: Optional[str] = Field(
        None, description="webdataset shards (glob) of general image-text pairs for the forgetting check")
    vocabulary: Optional[str] = Field(None, description="class names (.txt/.csv/.json) or captions (.txt)")
    vocabulary_kind: Literal["names", "captions"] = "names"
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a wildlife photo of a {}.", "a close-up photo of a {}."],
        description="zero-shot prompts per class: the teacher's labels and the measured top-1")
    labeller: LabellerConfig = Field(default_factory=TopKLabeller)
    student: Student = Field(default_factory=ReplayStudent)
    pairs: Optional[str] = Field(
        None, description="the download output (or its manifest.json) with the pretraining pairs the student "
                          "replays; default: this config's download output")
    wise_ft: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        description="weight-space interpolations teacher + α·(student − teacher) that compete with the student "
                    "on validation each iteration (WiSE-FT); [] = the student alone")
    verified_to_validation: int = Field(
        3, ge=0, le=1000, description="reviewer-verified pool images (cerebro review): one in N (by content hash) "
                                      "joins validation, the rest train every student at their verified label; "
                                      "0: all train")
    early_stop: bool = Field(True, description="stop when the validation metric falls")
    seed: int = 0

    @field_validator("wise_ft")
    @classmethod
    def _alphas_ok(cls, v: list[float]) -> list[float]:
        if any(not 0 < a < 1 for a in v):
            raise ValueError("each α strictly between 0 (the teacher) and 1 (the student)")
        return sorted(set(v))

    @model_validator(mode="before")
    @classmethod
    def _kinds_by_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, default in (("student", "replay"), ("labeller", "top_k")):
                v = data.get(key)
                if isinstance(v, str):  # --set adapt.student=scratch
                    data = {**data, key: {"kind": v}}
                elif isinstance(v, dict) and "kind" not in v:  # --set adapt.student.budget=0.1: the default kind
                    data = {**data, key: {"kind": default, **v}}
        return data
