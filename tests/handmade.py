"""Outputs written by hand, rows and sidecar as `hfenc embed` lays them out (a helper module, not
a test module): for tests of what reads outputs (search, diff) on rows chosen by the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_output(path: Path, rows: np.ndarray, sidecar: dict, row_group: int = 1000) -> Path:
    """`rows` at `path` (.npy with its sidecar beside it, or .parquet with the sidecar inside)."""
    n = len(rows)
    if path.suffix == ".parquet":
        emb = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])
        table = pa.table({"row": np.arange(n, dtype=np.int64), "embedding": emb})
        pq.write_table(table.replace_schema_metadata({"hfenc": json.dumps(sidecar)}), path, row_group_size=row_group)
    else:
        np.save(path, rows)
        path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path
