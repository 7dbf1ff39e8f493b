"""Tensors into a safetensors file, written in small pieces from the tensors' own memory.

``safetensors.torch.save_file`` writes each tensor in one ``write`` call, which on a VM that hands free
memory back to its host can cost many times the bytes (:func:`facts.io.write_in_pieces`);
``safetensors.torch.save`` gives the file's bytes but as a copy (two, while it runs: Gemma 3 270M's first load
peaked 1.5-1.8 GB higher with it).
:func:`write_safetensors` writes the bytes ``save`` gives, with no copy of the weights:

- an 8-byte little-endian length ``N``, then ``N`` bytes of JSON: ``__metadata__`` (when given) and, per
  tensor, its ``dtype``, ``shape`` and ``data_offsets`` ``[begin, end)`` in the data that follows,
  compact, padded with spaces to a multiple of 8 bytes;
- the tensors' bytes (little-endian, row-major), ordered as safetensors orders them: by dtype (its
  ``Dtype`` from last to first, so 8-byte types first and ``BOOL`` last), then by name.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from typing import Iterable, Iterator

import torch
from jaxtyping import Shaped

from facts.io import write_in_pieces

DTYPE_NAMES = {
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32", torch.uint32: "U32",
    torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint16: "U16", torch.int16: "I16",
    torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
"""The safetensors name of each torch dtype :func:`write_safetensors` writes, in the order safetensors places
their tensors in a file (its ``Dtype`` from last to first)."""


def write_safetensors(tensors: dict[str, Shaped[torch.Tensor, "..."]], path: str | os.PathLike[str],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (and free-text ``metadata``) to ``path`` as ``safetensors.torch.save_file`` would, byte for
    byte, in writes of at most 64 KiB read from each tensor's memory (one tensor at a time is copied, only where
    it is not a contiguous CPU tensor). A dtype safetensors' format has no name for here raises ``ValueError``
    naming the tensor, before anything is written."""
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} is {tensor.dtype}, which write_safetensors does not write "
                             f"(it writes {', '.join(str(d) for d in DTYPE_NAMES)})")
    rank = {dtype: place for place, dtype in enumerate(DTYPE_NAMES)}
    order = sorted(tensors, key=lambda name: (rank[tensors[name].dtype], name))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    begin = 0
    for name in order:
        tensor = tensors[name]
        end = begin + tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [begin, end]}
        begin = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    tensor_bytes = _bytes_of(tensors[name] for name in order)
    write_in_pieces(path, itertools.chain([struct.pack("<Q", len(text)), text], tensor_bytes))


def _bytes_of(tensors: Iterable[torch.Tensor]) -> Iterator[memoryview]:
    """Each tensor's bytes as a view of its own memory (of a CPU contiguous copy where it is not one), one tensor
    at a time."""
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        yield memoryview(flat.view(torch.uint8).numpy())
