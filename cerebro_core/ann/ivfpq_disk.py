"""``ivfpq_disk``: IVF-PQ with memory-mapped lists, refined from fp16 vectors read per row from
disk (the structures: :mod:`cerebro_core.ann.disk`), for when no in-RAM kind fits; resident
memory ~ its centroids. Tuned on two knobs: for each refinement depth (``k_factor``) a ladder of
``nprobe``, stopped where recall stops rising."""

from __future__ import annotations

from pathlib import Path

from cerebro_core.ann import disk
from cerebro_core.ann.base import INDEX_FILE, IndexKind, faiss_module
from cerebro_core.ann.ivf import nprobe_ladder


class IVFPQDisk(IndexKind):
    name = "ivfpq_disk"
    trained = True
    needs_vectors = True
    in_ram = False
    stop_on_plateau = True

    def estimate_mb(self, n: int, d: int) -> float:
        return disk.resident_mb(n, d)  # codes and vectors are mapped or read per row

    def build(self, vectors, seed: int = 0):
        raw, bp = disk.build(vectors, seed)
        return raw, {**bp, "disk_mb": round(disk.disk_mb(*vectors.shape), 1)}, False

    def train_empty(self, vectors, n: int, seed: int = 0):
        return disk.train_empty(vectors, n, seed)

    def ladders(self, build_params: dict) -> list[list[dict]]:
        nprobes = nprobe_ladder(build_params)
        return [[{"nprobe": c, "k_factor": f} for c in nprobes] for f in disk.K_FACTORS]

    def params(self, raw, setting: dict, sel=None):
        return faiss_module().SearchParametersIVF(nprobe=int(setting.get("nprobe", raw.nprobe)), sel=sel)

    def apply(self, raw, setting: dict) -> None:
        raw.nprobe = setting.get("nprobe", raw.nprobe)
        raw.k_factor = setting.get("k_factor", disk.K_FACTOR)

    def add(self, raw, x) -> None:
        raw.add(x)  # in chunks; the raw index keeps its refinement vectors

    def ivf(self, raw):
        return faiss_module().extract_index_ivf(raw.ivf)

    def write(self, raw, folder: Path) -> None:
        raw.write(Path(folder) / INDEX_FILE)  # its vectors are the bundle's vectors.npy

    def read(self, folder: Path, mmap: bool = True, vectors=None):
        folder = Path(folder)
        if vectors is None:
            return disk.DiskIVFPQ.read(folder / INDEX_FILE, folder / "vectors.npy", mmap=mmap)
        return disk.DiskIVFPQ(disk.read_ivf(folder / INDEX_FILE, mmap), vectors)
