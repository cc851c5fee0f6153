"""NpzWriter: a sparse output as SciPy's CSR .npz (issue 25), with the .npy writer's guarantees.

A chunk's SparseRows are one small uncompressed .npz (indptr, indices, values) in the hidden
`.OUT.partial/` directory (hfenc.io.chunkfiles: fsynced, then claimed by the resume state); at
the end hfenc.io.npz.write_csr streams them, in row order, into the staged file, which the
journaled publication renames into place with the sidecar. Memory stays at one chunk's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from hfenc.io.chunkfiles import ChunkFiles
from hfenc.io.npz import write_csr
from hfenc.io.outputs import OutputPaths
from hfenc.model.sparse import SparseBlock, SparseRows


class NpzWriter(ChunkFiles):
    """`rows` rows of `dim` vocabulary entries each (the sidecar's "dim")."""

    suffix = ".npz"

    def __init__(self, paths: OutputPaths, rows: int, dim: int, fingerprint: dict, resume: bool) -> None:
        self.rows_total, self.dim = rows, dim
        super().__init__(paths, fingerprint, resume)

    def rows(self, start: int, n: int) -> SparseBlock:
        block = SparseBlock(n, self.dim)
        self._pending = (start, block)
        return block

    def _write_chunk(self, start: int, block: Any) -> None:
        rows = block.rows()
        self._commit(start, len(rows), lambda fh: np.savez(fh, indptr=rows.indptr, indices=rows.indices,
                                                            values=rows.values))

    def _parts(self) -> Iterator[SparseRows]:
        for _, _, path in self._in_order():
            with np.load(path) as chunk:
                yield SparseRows(chunk["indptr"], chunk["indices"], chunk["values"], self.dim)

    def _merge(self, sidecar: dict, fh: IO[bytes]) -> None:
        write_csr(fh, self.rows_total, self.dim, self._parts)
