"""SparseRows: rows of a sparse embedding (SPLADE), held as CSR arrays.

One value type for every place sparse rows travel: the engine's batches, a chunk's block, the
.npz and Parquet writers, search and the library's `encode`. CSR is what SciPy, the .npz format and
Parquet's list<struct<index, value>> all hold: per row, its active vocabulary indices (sorted,
int32) and their values (float32); `indptr[i]:indptr[i + 1]` is row i's span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class SparseRows:
    indptr: np.ndarray  # int64, rows + 1, from 0
    indices: np.ndarray  # int32, sorted within each row
    values: np.ndarray  # float32
    dim: int  # the vocabulary size (columns)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1] - self.indptr[0])

    def counts(self) -> np.ndarray:
        """Active dimensions per row."""
        return np.diff(self.indptr)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.indptr[i]), int(self.indptr[i + 1])
        return self.indices[a:b], self.values[a:b]

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(len(self)), self.counts())
        out[rows, self.indices[self.indptr[0]:self.indptr[-1]]] = self.values[self.indptr[0]:self.indptr[-1]]
        return out

    def to_scipy(self) -> Any:
        """A scipy.sparse.csr_matrix of the rows (SciPy is not one of hfenc's dependencies)."""
        try:
            from scipy import sparse
        except ImportError:
            from hfenc.errors import ConfigError

            raise ConfigError("to_scipy() needs SciPy, which is not installed", hint="pip install scipy") from None
        base = int(self.indptr[0])
        return sparse.csr_matrix((self.values[base:self.indptr[-1]], self.indices[base:self.indptr[-1]],
                                  self.indptr - base), shape=self.shape)

    def take(self, order: np.ndarray) -> SparseRows:
        """The rows in `order` (row j of the result is row order[j])."""
        order = np.asarray(order, np.int64)
        counts = self.counts()[order]
        indptr = np.zeros(len(order) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        source = np.repeat(self.indptr[:-1][order] - indptr[:-1], counts) + np.arange(int(indptr[-1]))
        return SparseRows(indptr, self.indices[source], self.values[source], self.dim)

    @classmethod
    def empty(cls, dim: int) -> SparseRows:
        return cls(np.zeros(1, np.int64), np.empty(0, np.int32), np.empty(0, np.float32), dim)

    @classmethod
    def concat(cls, parts: Sequence[SparseRows], dim: int | None = None) -> SparseRows:
        if not parts:
            assert dim is not None
            return cls.empty(dim)
        counts = np.concatenate([p.counts() for p in parts])
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, np.concatenate([p.indices[p.indptr[0]:p.indptr[-1]] for p in parts]),
                   np.concatenate([p.values[p.indptr[0]:p.indptr[-1]] for p in parts]), parts[0].dim)

    @classmethod
    def from_dense(cls, rows: Any) -> SparseRows:
        """The non-zero entries of an (n, dim) torch tensor or numpy array, in row-major order.
        A torch tensor is reduced on its own device: only the active entries are copied back."""
        if hasattr(rows, "detach"):
            import torch

            x = rows.detach()
            active = x != 0
            counts = active.sum(dim=1).cpu().numpy().astype(np.int64)
            at = active.nonzero()
            values = x[active].float().cpu().numpy()
            indices = at[:, 1].to(torch.int32).cpu().numpy()
            n, dim = x.shape
        else:
            x = np.asarray(rows)
            active = x != 0
            counts = active.sum(axis=1).astype(np.int64)
            indices = np.nonzero(active)[1].astype(np.int32)
            values = x[active].astype(np.float32)
            n, dim = x.shape
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, indices, values, int(dim))


class SparseBlock:
    """A chunk's destination for sparse rows: the engine assigns batches of rows by position
    (`block[positions] = rows`), as it does into a dense array; `rows()` is the chunk in order."""

    def __init__(self, n: int, dim: int) -> None:
        self.n, self.dim = n, dim
        self._parts: list[tuple[np.ndarray, SparseRows]] = []

    def __len__(self) -> int:
        return self.n

    def __setitem__(self, positions: np.ndarray, rows: SparseRows) -> None:
        positions = np.asarray(positions, np.int64)
        assert len(positions) == len(rows)
        self._parts.append((positions, rows))

    def rows(self) -> SparseRows:
        if not self._parts:
            return SparseRows(np.zeros(self.n + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.float32), self.dim)
        positions = np.concatenate([p for p, _ in self._parts])
        if len(positions) != self.n or len(np.unique(positions)) != self.n:
            raise RuntimeError(f"a sparse chunk of {self.n} rows got {len(positions)} rows")  # an engine defect
        return SparseRows.concat([r for _, r in self._parts]).take(np.argsort(positions, kind="stable"))
