"""A GGUF file's weights read one tensor at a time, with no second copy of anything.

transformers 5 reads the weights of a GGUF whose architecture its fast path does not cover (Llama,
Gemma 2/3, among others) with ``load_gguf_checkpoint(return_tensors=True)``: it parses the
metadata again, then dequantises each tensor and copies it (``np.copy`` of the fresh array
``dequantize`` returned), all while the ``gguf.GGUFReader``'s metadata fields stay in memory
(~0.7 GiB of Python objects for Gemma 3's 262,144-token vocabulary). Measured on Gemma 3 270M,
peak RSS 3.18 GiB for a 1.0 GiB float32 model. :func:`lean_gguf_weights` replaces that one
step: the same processors and names (transformers' ``TENSOR_PROCESSORS`` and
``get_gguf_hf_weights_map``), the model's own config instead of a second parse, the reader's
fields released first, and a tensor copied only when ``dequantize`` hands back a read-only view
of the file (unquantised float32 tensors). The tensors become the model's parameters (transformers
assigns them into the model it built on the meta device), so the weights exist once.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor


@contextlib.contextmanager
def lean_gguf_weights(release_reader: Callable[[Path], None]) -> Iterator[None]:
    """Within the block, transformers reads a GGUF's weights with :func:`gguf_state_dict`.

    ``release_reader(path)`` is called once the parsed reader of ``path`` has been taken for
    the weights: whoever shares that reader (``models.pretrained``'s one-parse block) stops
    handing it out, so its metadata fields are freed before the first tensor is dequantised.
    """
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    original = GgufHfQuantizer.get_state_dict

    def get_state_dict(self, checkpoint_file: str, model: torch.nn.Module) -> dict[str, Tensor]:
        if self.supported:  # transformers' fast path streams its own packed tensors
            return original(self, checkpoint_file, model)
        return gguf_state_dict(Path(checkpoint_file), model, self.dtype, release_reader)

    GgufHfQuantizer.get_state_dict = get_state_dict
    try:
        yield
    finally:
        GgufHfQuantizer.get_state_dict = original


def gguf_state_dict(
    path: Path, model: torch.nn.Module, dtype: torch.dtype | None, release_reader: Callable[[Path], None]
) -> dict[str, Tensor]:
    """The tensors of the GGUF file ``path`` under ``model``'s parameter names, dequantised one at a
    time (to ``dtype`` when given): what ``load_gguf_checkpoint(path, return_tensors=True)["tensors"]``
    holds, computed by transformers' own per-architecture processor (e.g. Gemma's norm weights
    minus 1, Llama's query/key row order undone)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    reader = gguf.GGUFReader(path)
    architecture = read_field(reader, "general.architecture")[0]
    tensors = reader.tensors
    release_reader(path.resolve())
    del reader
    gc.collect()  # the reader's fields sit in reference cycles: freed only by the collector
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=model.config.to_dict())
    with _tensor_name_map_built_once():
        names = get_gguf_hf_weights_map(model, processor)
    parsed: dict[str, dict] = {"config": processor.config, "tensors": {}}
    while tensors:
        tensor = tensors.pop(0)
        weights = gguf.dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=names,
                                   parsed_parameters=parsed)
        del tensor, weights
        if result.name not in names:
            continue
        array = result.weights
        if not array.flags.writeable or not array.flags.c_contiguous:  # a view of the read-only file
            array = np.array(array, order="C")
        value = torch.from_numpy(array)
        parsed["tensors"][names[result.name]] = value if dtype is None else value.to(dtype)
    return parsed["tensors"]


@contextlib.contextmanager
def _tensor_name_map_built_once() -> Iterator[None]:
    """Within the block, ``gguf.get_tensor_name_map(architecture, n_blocks)`` builds each map once.

    transformers' ``get_gguf_hf_weights_map`` recurses into every submodule of the model and
    builds gguf's ``TensorNameMap`` (every name pattern of the architecture, for every block)
    afresh at each one: 397 times for SmolLM2-135M, three quarters of the mapping's time and about
    a quarter of a whole load. The map is only read, so one per (architecture, n_blocks) serves all.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.cache(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def plain_array_reader(reader: Callable[..., object]) -> Callable[..., object]:
    """``reader`` (``gguf.GGUFReader`` or a subclass) reading through a plain ndarray view of the file.

    The reader slices its ``np.memmap`` once or twice per metadata element, and each slice of a
    memmap runs ``memmap.__getitem__`` and ``__array_finalize__`` in Python: most of the parse of a
    vocabulary's metadata (Gemma 3's 262,144 tokens: ~14 s of CPU). A plain view of the same
    memory map (read-only, as the memmap is) slices in C; the fields and tensors are the same bytes.
    Anything that is not a class (an enclosing block's shared reader) is returned as it is.
    """
    if not isinstance(reader, type):
        return reader

    class PlainArrayReader(reader):  # type: ignore[misc, valid-type]
        @property
        def data(self) -> np.ndarray:
            return self._plain_data

        @data.setter
        def data(self, memory_map: np.ndarray) -> None:
            self._plain_data = np.asarray(memory_map)  # no copy: a base-class view of the map

    return PlainArrayReader
