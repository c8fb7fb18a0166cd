"""The structures of ``ivfpq_disk``, the index for collections larger than RAM.

- **Coarse quantizer**: ``nlist = 2^round(log2(2·√n))`` centroids (up to 2^20), searched
  exactly (a flat quantizer: nlist × d flops a query, 2M at 4,096 lists). An HNSW quantizer
  (``IVF{nlist}_HNSW32``) was measured first: at 2,048 lists of 512-d centroids its greedy search
  (efSearch 16) found the nearest centroid for 34% of the vectors and put them in 717 of the
  lists (one list held 103,060 of 1M vectors), so every query scanned ~500k codes.
- **Codes**: PQ with d/8 sub-quantizers of 8 bits (fewer for a small collection): 64 B + an 8 B
  id per 512-d vector, in
  ``index.faiss``. On load FAISS memory-maps them (``IO_FLAG_MMAP`` turns the stored inverted
  lists into read-only on-disk lists): only the probed lists' pages are read.
- **Refinement**: the best ``k × k_factor`` PQ candidates are re-scored exactly against the
  bundle's ``vectors.npy`` (fp16), read row by row with ``pread`` (:class:`VectorFile`): a query
  reads only its candidates' rows, never the whole copy (1 KB a vector at d = 512).
- **Build**: trained on a sample, then vectors are added in chunks, so the input can be a
  memory-mapped array larger than RAM. Resident: the codes being written (72 B a vector) and one
  chunk.

Resident memory while searching is the centroids (nlist × 4d B) and the list pages the queries
touched. :func:`cerebro_core.ann.kinds.choose_kind` picks this kind
(:mod:`cerebro_core.ann.ivfpq_disk`) when no in-RAM kind fits ``index.memory_budget_mb``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from cerebro_core.ann.ivfpq import pq_m

K_FACTOR = 8  # PQ candidates re-scored per result (the default; tuned from K_FACTORS)
K_FACTORS = (4, 8, 16, 32, 64)
TRAIN_PER_LIST = 64  # training vectors per centroid (FAISS asks for at least 39)
ADD_CHUNK = 100_000
REFINE_BATCH = 256  # queries re-scored together


def nlist_for(n: int) -> int:
    """2√n as a power of two, with at least 39 training vectors per centroid (FAISS's minimum)."""
    want = 2 ** round(math.log2(2 * math.sqrt(max(n, 1))))
    most = 2 ** int(math.log2(max(n // 39, 1)))
    return int(max(1, min(2 ** 20, want, most)))


def pq_bits(n: int) -> int:
    """8 bits a sub-quantizer, fewer when there are under 39 training vectors per code word."""
    return int(max(1, min(8, math.floor(math.log2(max(n // 39, 2))))))


def resident_mb(n: int, d: int) -> float:
    """Memory the searcher keeps resident (centroids, list headers); the rest is mapped or read."""
    return nlist_for(n) * (4 * d + 32) / 2**20


def disk_mb(n: int, d: int) -> float:
    """Bytes on disk: codes + ids, and the fp16 refinement copy."""
    return n * (pq_m(d) + 8 + 2 * d) / 2**20


class _Fd:
    def __init__(self, path: Path):
        self.fd = os.open(str(path), os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead around each row

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class VectorFile:
    """Rows of an ``.npy`` matrix read with ``pread``, not memory-mapped: refining a query reads
    its ~k × k_factor candidate rows through the page cache, and none of the file counts as the
    process's resident memory (a mapping would, page by page, with the kernel's fault-around)."""

    def __init__(self, path: Path, start: int = 0, end: Optional[int] = None, _fd: Optional[_Fd] = None):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: not a C-ordered matrix")
        self.path, self.dtype, self.d = Path(path), np.dtype(dtype), int(shape[1])
        self.row_bytes = self.d * self.dtype.itemsize
        self.start, self.end = start, shape[0] if end is None else end
        self._fd = _fd or _Fd(path)

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.d)

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(len(self))
            if step != 1:
                raise IndexError("VectorFile slices are contiguous")
            return VectorFile(self.path, self.start + a, self.start + b, self._fd)
        rows = np.atleast_1d(np.asarray(key, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        buf = b"".join(os.pread(self._fd.fd, self.row_bytes, self.offset + (self.start + int(r)) * self.row_bytes)
                       for r in rows)
        out = np.frombuffer(buf, dtype=self.dtype).reshape(len(rows), self.d)
        return out[0] if np.ndim(key) == 0 else out


class DiskIVFPQ:
    """IVF-PQ with (memory-mapped) inverted lists and exact refinement from ``vectors``."""

    def __init__(self, ivf, vectors, k_factor: int = K_FACTOR):
        self.ivf = ivf  # the FAISS index (IndexIVFPQ, possibly with read-only on-disk lists)
        self.vectors = vectors  # (n, d) fp16/fp32 array, memmap or VectorFile; row i is id i
        self.k_factor = k_factor

    @property
    def ntotal(self) -> int:
        return int(self.ivf.ntotal)

    @property
    def d(self) -> int:
        return int(self.ivf.d)

    @property
    def nprobe(self) -> int:
        return int(self._ivf().nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._ivf().nprobe = int(value)

    def _ivf(self):
        import faiss

        return faiss.extract_index_ivf(self.ivf)

    def search(self, q: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) like a FAISS index: ``params`` is a ``SearchParametersIVF`` (nprobe, selector)."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        D = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if self.ntotal == 0 or k <= 0:
            return D, ids
        kk = min(k * self.k_factor, self.ntotal)
        _, cand = self.ivf.search(q, kk, params=params)
        for s in range(0, len(q), REFINE_BATCH):
            c = cand[s:s + REFINE_BATCH]
            valid = c >= 0
            rows = np.where(valid, c, 0)
            flat = rows.ravel()
            order = np.argsort(flat, kind="stable")  # read the mapped rows in file order
            vecs = np.empty((len(flat), self.d), dtype=np.float32)
            vecs[order] = self.vectors[flat[order]]
            scores = np.einsum("qkd,qd->qk", vecs.reshape(*c.shape, self.d), q[s:s + REFINE_BATCH])
            scores[~valid] = -np.inf
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            D[s:s + len(c), :top.shape[1]] = np.take_along_axis(scores, top, 1)
            ids[s:s + len(c), :top.shape[1]] = np.where(np.take_along_axis(valid, top, 1),
                                                         np.take_along_axis(c, top, 1), -1)
        return D, ids

    def add(self, x: np.ndarray) -> None:
        """Append vectors (ids continue); the index must have been read without mmap."""
        for s in range(0, len(x), ADD_CHUNK):
            self.ivf.add(np.ascontiguousarray(x[s:s + ADD_CHUNK], dtype=np.float32))
        self.vectors = np.concatenate([np.asarray(self.vectors), np.asarray(x, dtype=self.vectors.dtype)])

    def reconstruct(self, i: int) -> np.ndarray:
        return np.asarray(self.vectors[int(i)], dtype=np.float32)

    def write(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.ivf, str(path))

    @classmethod
    def read(cls, path: Path, vectors_path: Path, mmap: bool = True, k_factor: int = K_FACTOR) -> "DiskIVFPQ":
        """``mmap=False`` reads the lists into memory, so that vectors can be added."""
        ivf = read_ivf(path, mmap)
        vectors = VectorFile(vectors_path) if mmap else np.load(vectors_path, allow_pickle=False)
        if len(vectors) != ivf.ntotal:
            raise ValueError(f"{vectors_path}: {len(vectors)} vectors for an index of {ivf.ntotal}")
        return cls(ivf, vectors, k_factor)


def train_empty(vectors, n: Optional[int] = None, seed: int = 0, nlist: Optional[int] = None):
    """The FAISS IVF-PQ for ``n`` vectors (default: as many as given), trained on a sample of
    ``vectors`` and still empty; returns (index, build params)."""
    import faiss

    n = len(vectors) if n is None else n
    d = vectors.shape[1]
    nlist = nlist or nlist_for(n)
    m, bits = pq_m(d), pq_bits(n)
    # L2 on unit vectors ranks as inner product does (|q - x|² = 2 - 2 q·x), and it is what FAISS's
    # residual PQ estimates best; the final scores are inner products from the refinement.
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x{bits}", faiss.METRIC_L2)
    ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivfpq.do_polysemous_training = False  # the factory's default: 4/5 of the training time, unused
    ivfpq.use_precomputed_table = -1  # nlist × d × 1 KB of RAM; per-list tables are computed per query
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(vectors), size=min(len(vectors), TRAIN_PER_LIST * nlist), replace=False))
    index.train(np.ascontiguousarray(vectors[pick], dtype=np.float32))
    bp = {"nlist": nlist, "pq_m": m, "pq_bits": bits, "quantizer": "flat", "refine": "fp16 vectors.npy (pread)"}
    return index, bp


def add_chunks(index, vectors) -> None:
    for s in range(0, len(vectors), ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[s:s + ADD_CHUNK], dtype=np.float32))


def read_ivf(path: Path, mmap: bool = True):
    """The FAISS index file: lists memory-mapped (read-only) or read; no precomputed tables."""
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE | (faiss.IO_FLAG_MMAP if mmap else 0))


def build(vectors, seed: int = 0, nlist: Optional[int] = None) -> tuple[DiskIVFPQ, dict]:
    """Train on a sample of ``vectors`` (an array or memmap, L2-normalised) and add them all in chunks."""
    index, bp = train_empty(vectors, seed=seed, nlist=nlist)
    add_chunks(index, vectors)
    return DiskIVFPQ(index, vectors), bp


def write_vectors(path: Path, vectors, chunk: int = 100_000) -> None:
    """fp16 ``.npy``, written in chunks (``vectors`` may be a memmap larger than RAM)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=tuple(vectors.shape))
    for s in range(0, len(vectors), chunk):
        out[s:s + chunk] = np.asarray(vectors[s:s + chunk], dtype=np.float16)
    out.flush()
    del out
