"""Arrow IPC shards: one row per image, rows sorted by class, one record batch per shard.

A shard is a plain Arrow IPC file (``pyarrow.ipc.open_file`` reads it; so does Ray Data via
``ray.data.from_arrow``). Columns:

================  ===============================  =========================================
``image``         fixed_size_list<uint8>[H*W]      row-major H×W image, ink = high (0..255)
``class_id``      int32                            global class id (contiguous within a split)
``alphabet_id``   int32                            index into the manifest's ``alphabets``
``split``         string                           split name
``character``     string                           class name within its alphabet
``item``          int16                            index of the image within its class
``name``          string                           source image name (file name, token id)
================  ===============================  =========================================

Lake-runs datasets add ``run`` (int16), ``role`` ("memory" / "target") and ``label`` (int16,
the index of the true memory class in the run).

Readers memory-map shards: :func:`open_shard` returns zero-copy numpy views of the image column.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from varmem.episodes.errors import DataError

IMAGE_COLUMN = "image"


def schema(height: int, width: int, lake_runs: bool = False) -> pa.Schema:
    fields = [
        pa.field(IMAGE_COLUMN, pa.list_(pa.uint8(), height * width)),
        pa.field("class_id", pa.int32()),
        pa.field("alphabet_id", pa.int32()),
        pa.field("split", pa.string()),
        pa.field("character", pa.string()),
        pa.field("item", pa.int16()),
        pa.field("name", pa.string()),
    ]
    if lake_runs:
        fields += [pa.field("run", pa.int16()), pa.field("role", pa.string()), pa.field("label", pa.int16())]
    return pa.schema(fields, metadata={b"image_shape": f"{height},{width}".encode(), b"ink": b"high"})


def write_shard(path: Path, columns: dict[str, np.ndarray | list], images: np.ndarray, sch: pa.Schema) -> dict:
    """Write one shard (a single record batch) and return ``{"rows", "bytes", "sha256"}``.

    ``images`` is ``uint8 [rows, H, W]``; ``columns`` holds the other columns in schema order.
    """
    rows = images.shape[0]
    flat = pa.array(np.ascontiguousarray(images).reshape(-1), type=pa.uint8())
    arrays = [pa.FixedSizeListArray.from_arrays(flat, images.shape[1] * images.shape[2])]
    for f in list(sch)[1:]:
        arrays.append(pa.array(columns[f.name], type=f.type))
    batch = pa.RecordBatch.from_arrays(arrays, schema=sch)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, sch) as writer:
        writer.write_batch(batch)
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Shard:
    """A memory-mapped shard: the Arrow table and zero-copy numpy views of its columns."""

    path: Path
    table: pa.Table
    images: np.ndarray  # uint8 [rows, H, W], a view into the mapped file
    class_id: np.ndarray  # int32 [rows]
    alphabet_id: np.ndarray  # int32 [rows]


def open_shard(path: Path, image_shape: tuple[int, int]) -> Shard:
    """Memory-map ``path``; DataError naming the file if it is not a readable shard of this shape."""
    try:
        source = pa.memory_map(str(path), "r")
        table = ipc.open_file(source).read_all()
    except FileNotFoundError:
        raise DataError(f"shard {path} is missing (run `varmem data verify {path.parent}`)") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"shard {path} is not a readable Arrow IPC file ({exc})") from None
    h, w = image_shape
    col = table.column(IMAGE_COLUMN) if IMAGE_COLUMN in table.column_names else None
    if col is None or not pa.types.is_fixed_size_list(col.type) or col.type.list_size != h * w:
        raise DataError(f"shard {path}: column 'image' is not fixed_size_list<uint8>[{h * w}] as the manifest says")
    if col.num_chunks == 1:
        values = col.chunk(0).flatten().to_numpy(zero_copy_only=True)
    else:  # written by another tool; still readable, at the cost of one copy
        values = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks])
    images = values.reshape(table.num_rows, h, w)

    def ints(name: str) -> np.ndarray:
        c = table.column(name)
        return c.chunk(0).to_numpy(zero_copy_only=True) if c.num_chunks == 1 else c.to_numpy()

    return Shard(path=path, table=table, images=images, class_id=ints("class_id"), alphabet_id=ints("alphabet_id"))
