"""The training loop's evaluation: retrieval on the held-out pairs and zero-shot classification of
a labelled folder. The model runs on the job's device; every feature comes back to the host."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from cerebro_core.evaluate import DEFAULT_TEMPLATES, class_embeddings, retrieval_metrics, unwrap, zero_shot_scores
from cerebro_core.model.factory import ClipBundle
from cerebro_core.storage import Storage
from cerebro_core.train.data import iter_pairs


class ZeroShotSpec(BaseModel):
    folder: str
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    max_images: int = 1000


@torch.no_grad()
def evaluate(bundle: ClipBundle, job, device: str) -> dict[str, float]:
    """Held-out retrieval and zero-shot metrics of a ``TrainJob`` (train/loop.py)."""
    from cerebro_core.data import images

    model = bundle.model
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    storage = Storage(job.storage)
    if job.val_shards:
        imgs, txts, caps = [], [], []
        batch_i, batch_t = [], []
        for _, img_bytes, text in iter_pairs(job.val_shards, storage, job.val_max_samples):
            try:
                batch_i.append(bundle.preprocess_val(images.decode(img_bytes)))
            except images.ImageRejected:
                continue
            batch_t.append(text)
            caps.append(text)
            if len(batch_i) == 256:
                imgs.append(_enc_img(model, batch_i, device))
                txts.append(_enc_txt(model, bundle.tokenizer(batch_t), device))
                batch_i, batch_t = [], []
        if batch_i:
            imgs.append(_enc_img(model, batch_i, device))
            txts.append(_enc_txt(model, bundle.tokenizer(batch_t), device))
        if imgs:
            r = retrieval_metrics(torch.cat(imgs), torch.cat(txts), caps)
            out.update({f"val/{k}": v for k, v in r.items()})
    if job.zero_shot is not None:
        feats, cls, labels = zero_shot_features(bundle, job.zero_shot, device)
        z = zero_shot_scores(feats, cls, labels)
        out.update({"zeroshot/top1": z["top1"], "zeroshot/mean_per_class": z["mean_per_class"]})
    model.train(was_training)
    return out


def zero_shot_features(bundle: ClipBundle, spec: ZeroShotSpec, device: str):
    """(image features, class embeddings, labels) of the labelled folder, all on the host: the
    model runs on ``device``, the class embeddings come back to the CPU beside the image features
    (on CUDA they used to stay on the GPU, and the scores multiplied a CPU by a CUDA tensor)."""
    from cerebro_core.data import images
    from cerebro_core.data.sources import list_folder

    model = bundle.model
    recs = [r for r in list_folder(spec.folder) if r.label]
    if len(recs) > spec.max_images:  # an even spread over the (sorted) classes
        stride = len(recs) / spec.max_images
        recs = [recs[int(i * stride)] for i in range(spec.max_images)]
    classes = sorted({r.label for r in recs})
    cls = class_embeddings(model, bundle.tokenizer, classes, spec.templates, device).cpu()
    feats, labels, batch = [], [], []
    for r in recs:
        try:
            batch.append(bundle.preprocess_val(images.decode(open(r.path, "rb").read())))
            labels.append(classes.index(r.label))
        except (images.ImageRejected, OSError):
            continue
        if len(batch) == 256:
            feats.append(_enc_img(model, batch, device))
            batch = []
    if batch:
        feats.append(_enc_img(model, batch, device))
    return torch.cat(feats), cls, torch.tensor(labels)


def _enc_img(model, batch, device):
    return F.normalize(unwrap(model).encode_image(torch.stack(batch).to(device)).float(), dim=-1).cpu()


def _enc_txt(model, tokens, device):
    return F.normalize(unwrap(model).encode_text(tokens.to(device)).float(), dim=-1).cpu()
