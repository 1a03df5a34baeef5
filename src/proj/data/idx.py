"""The IDX file format MNIST ships in: header checks with actionable errors, and a writer for test data.

torchvision reads these files; it does not explain what is wrong with a bad one. A header check costs
a few bytes of I/O and turns a reshape error deep in the loader into a message naming file and fix.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from proj.errors import UserError

UBYTE = 0x08  # the only element type MNIST uses
HEADER_BYTES_PER_DIM = 4


def idx_magic(ndim: int) -> int:
    """Magic number of an unsigned-byte IDX file with `ndim` dimensions (0x801 labels, 0x803 images)."""
    return (UBYTE << 8) | ndim


def read_idx_shape(path: Path, ndim: int) -> tuple[int, ...]:
    """Validate the header and size of an IDX file and return its shape."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            header = file.read(4 + HEADER_BYTES_PER_DIM * ndim)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}.") from err
    fix = "Delete it so it is downloaded again, or replace it with the original file."
    if len(header) < 4 + HEADER_BYTES_PER_DIM * ndim:
        raise UserError(f"{path} is truncated: {size} bytes is shorter than an IDX header. {fix}")
    (magic,) = struct.unpack(">i", header[:4])
    if magic != idx_magic(ndim):
        raise UserError(
            f"{path} is not an MNIST IDX file: magic number {magic:#010x}, expected {idx_magic(ndim):#010x}. {fix}"
        )
    shape = struct.unpack(f">{ndim}i", header[4:])
    expected = len(header) + int(np.prod(shape))
    if size != expected:
        raise UserError(
            f"{path} is corrupt: its header promises {expected} bytes for shape {list(shape)}, "
            f"the file has {size}. {fix}"
        )
    return shape


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (tests and benchmarks build synthetic MNIST with it)."""
    data = array.to(torch.uint8).contiguous().numpy()
    header = struct.pack(f">i{data.ndim}i", idx_magic(data.ndim), *data.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + data.tobytes())
