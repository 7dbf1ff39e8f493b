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

from models.memory import numpy_without_huge_pages


class FileCutShort(ValueError):
    """A GGUF whose metadata, tensor table or tensor data runs past the end of the file: an unfinished
    download or copy. Raised by the reader :func:`plain_array_reader` makes, at the first read past the end."""


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
        with numpy_without_huge_pages():  # the dequantised arrays are fresh, and each huge page of them costly
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
    minus 1, Llama's query/key row order undone). A tensor transformers has no parameter for (which its own
    reader skips, e.g. llama.cpp's ``rope_freqs.weight``) is refused with a ValueError, never skipped."""
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
        if result.name is None:  # the processor kept it itself (e.g. experts stacked into one parameter)
            continue
        if result.name not in names:  # transformers would skip it: the model would run without it
            if result.name == "rope_freqs.weight" and np.all(np.asarray(result.weights) == 1):
                continue  # scales every frequency by 1: without it the model is the same (unread_metadata agrees)
            raise ValueError(f"{path} holds the tensor {result.name!r}, which transformers' GGUF reader maps to no "
                             f"parameter of {type(model).__name__}: the model would run without it")
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
    """``reader`` (``gguf.GGUFReader`` or a subclass) reading through a plain ndarray view of the file, an array
    field at a time.

    The reader slices its ``np.memmap`` once or twice per metadata element, and each slice of a
    memmap runs ``memmap.__getitem__`` and ``__array_finalize__`` in Python: most of the parse of a
    vocabulary's metadata (Gemma 3's 262,144 tokens: ~14 s of CPU). A plain view of the same
    memory map (read-only, as the memmap is) slices in C; the fields and tensors are the same bytes.
    An array field of strings or scalars (a vocabulary's tokens, scores and types, BPE merges) is then read
    in one loop over its elements instead of a recursive call and two typed reads per element: the same
    parts (each string's length and bytes, each scalar a one-element view), data indices and types as the
    reader's own (3.3 → 0.4 CPU s for Gemma 3's metadata, 0.7 → 0.1 for SmolLM2's); anything else (an
    array of arrays, an empty one, a file of the other byte order) is read by the reader's own code.
    Anything that is not a class (an enclosing block's shared reader) is returned as it is.
    """
    if not isinstance(reader, type):
        return reader
    import struct
    import sys

    from gguf import GGUFValueType

    class PlainArrayReader(reader):  # type: ignore[misc, valid-type]
        @property
        def data(self) -> np.ndarray:
            return self._plain_data

        @data.setter
        def data(self, memory_map: np.ndarray) -> None:
            self._plain_data = np.asarray(memory_map)  # no copy: a base-class view of the map

        def _get(self, offset: int, dtype: object, count: int = 1, override_order: str | None = None) -> np.ndarray:
            stop = int(offset) + np.dtype(dtype).itemsize * int(count)
            if stop > len(self.data):  # the library's read would hand back fewer elements than it asked for
                raise FileCutShort(f"bytes {offset} to {stop} run past the end of the file ({len(self.data)} bytes)")
            return super()._get(offset, dtype, count, override_order)

        def _build_tensors(self, start_offs: int, fields: list) -> None:
            try:
                super()._build_tensors(start_offs, fields)
            except FileCutShort as error:
                raise FileCutShort(f"its tensor data, from byte {start_offs}, is incomplete: {error}") from None

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
            if raw_type != GGUFValueType.ARRAY or self.byte_order != "I" or sys.byteorder != "little":
                return super()._get_field_parts(orig_offs, raw_type)
            data, raw_itype, alen = self.data, self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            item_type, count, offset = GGUFValueType(int(raw_itype[0])), int(alen[0]), orig_offs + 12
            parts, types = [raw_itype, alen], [GGUFValueType.ARRAY, item_type]
            scalar, end = self.gguf_scalar_to_np.get(item_type), len(data)
            cut_short = FileCutShort(f"its metadata array at byte {orig_offs} ({count} elements) runs past the end "
                                     f"of the file ({end} bytes)")
            if count and item_type == GGUFValueType.STRING:  # per element: its length (uint64), then its bytes
                length, memory, append = struct.Struct("<Q").unpack_from, memoryview(data), parts.append
                for _ in range(count):
                    if offset + 8 > end:
                        raise cut_short
                    (size,) = length(memory, offset)
                    if offset + 8 + size > end:
                        raise cut_short
                    append(data[offset:offset + 8].view(np.uint64))
                    append(data[offset + 8:offset + 8 + size])
                    offset += 8 + size
                return offset - orig_offs, parts, list(range(3, 2 + 2 * count, 2)), types
            if count and scalar is not None:
                stop = offset + np.dtype(scalar).itemsize * count
                if stop > end:
                    raise cut_short
                values = data[offset:stop].view(scalar)
                parts += [values[i:i + 1] for i in range(count)]
                return 12 + values.nbytes, parts, list(range(2, 2 + count)), types
            return super()._get_field_parts(orig_offs, raw_type)

    return PlainArrayReader


def unread_metadata(reader: object) -> list[str]:
    """What a parsed GGUF (a ``gguf.GGUFReader``) says about its model that transformers' GGUF reader does not
    carry into the model it builds, each as ``"key = value"`` (empty when it carries all of it).

    transformers maps the ``{architecture}.*`` fields it knows into the config (``GGUF_TO_TRANSFORMERS_MAPPING``)
    and only logs the others, so a field it does not map is dropped: RoPE scaling (``rope.scaling.type``,
    ``.factor``, ...; linear ×8 on a tiny Llama: 13.3 nats), or anything else it does not know. Each such field
    is returned, except the ones that provably change nothing: RoPE scaling that is off (type ``none``, factor 1),
    ``attention.key_length``/``value_length`` equal to the head size transformers uses (Gemma 3 270M's
    ``value_length`` 256). Fields transformers' table maps to nothing are returned too: ``rope.dimension_count``
    (Qwen2, Gemma 3, ...) where it differs from that head size (a partial rotary it would not apply), any other
    always (Gemma 4's ``rope.freq_base``: its config keeps its own default base whatever the file says). So is
    llama.cpp's ``rope_freqs.weight`` tensor (Llama 3's RoPE scaling, per frequency), which transformers maps to no
    parameter, unless it is all ones. ``general.*`` and ``tokenizer.*`` fields describe the file and the tokenizer.
    A Gemma 2 or 3 whose heads are not 256 wide is returned too: llama.cpp scales its attention by the head size
    (by d_model/heads for the 27B models), transformers by ``query_pre_attn_scalar``, which it leaves at 256."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_TO_TRANSFORMERS_MAPPING

    fields = reader.fields  # type: ignore[attr-defined]

    def value(key: str) -> object:
        field = fields.get(key)
        return None if field is None else field.contents()

    architecture = str(value("general.architecture") or "")
    if not architecture:
        return []
    mapped_as = _transformers_architecture(architecture, str(value("general.name") or ""))
    renames = GGUF_TO_TRANSFORMERS_MAPPING["config"].get(mapped_as, {}) or _read_by_builder(reader, architecture)
    head_dim = next((value(f"{architecture}.{key}") for key, name in renames.items() if name == "head_dim"
                     and value(f"{architecture}.{key}") is not None), None)
    if head_dim is None:
        width, heads = value(f"{architecture}.embedding_length"), value(f"{architecture}.attention.head_count")
        head_dim = width // heads if isinstance(width, int) and isinstance(heads, int) and heads > 0 else None
    scaling = {key: value(key) for key in fields if key.startswith(f"{architecture}.rope.scaling.")}
    scaling_off = str(scaling.get(f"{architecture}.rope.scaling.type", "none")).lower() == "none" \
        and scaling.get(f"{architecture}.rope.scaling.factor", 1.0) in (None, 0, 0.0, 1, 1.0)
    unread = []
    for key in fields:
        if not key.startswith(f"{architecture}."):
            continue
        rest = key[len(architecture) + 1:]
        if rest in renames and renames[rest] is not None and renames[rest] != -1:
            continue  # read into the config
        if key in scaling:
            if not scaling_off:
                unread.append(f"{key} = {value(key)!r}")
            continue
        if rest in ("attention.key_length", "attention.value_length", "rope.dimension_count") \
                and head_dim is not None and value(key) == head_dim:
            continue
        if rest in renames and renames[rest] is None and rest != "rope.dimension_count":
            unread.append(f"{key} = {_short(value(key))} (transformers reads it into nothing)")
            continue
        unread.append(f"{key} = {_short(value(key))}")
    scalar = _query_pre_attn_scalar(mapped_as)
    if scalar is not None and head_dim is not None and head_dim != scalar:
        unread.append(f"{architecture}.attention.key_length = {head_dim} (llama.cpp scales attention by "
                      f"{head_dim}^-1/2, by d_model/heads for the 27B models; transformers by its "
                      f"query_pre_attn_scalar {scalar:g}^-1/2, which no GGUF field sets)")
    for tensor in reader.tensors:  # type: ignore[attr-defined]
        if tensor.name == "rope_freqs.weight" and not np.all(np.asarray(tensor.data) == 1):
            unread.append(f"tensor rope_freqs.weight = {_short(np.asarray(tensor.data).tolist())} (RoPE scaling)")
    return unread


def _read_by_builder(reader: object, architecture: str) -> dict[str, str]:
    """The ``{architecture}.*`` fields transformers' config builder of this architecture reads (those it builds with
    ``get_gguf_config`` rather than its mapping table: Qwen 3.5, LFM2), as a mapping table would name them (each
    to itself); empty for any other architecture, or where the builder cannot run on these fields (the load then
    fails with transformers' own error)."""
    try:
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
    except ImportError:
        return {}
    builder = GGUF_CONFIG_ARCHS.get(architecture)
    if builder is None:
        return {}

    class Noting(dict):
        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

    fields = reader.fields  # type: ignore[attr-defined]
    metadata = Noting({key: field.contents() for key, field in fields.items()})
    metadata.read = set()
    try:
        builder(metadata, tuple(tensor.name for tensor in reader.tensors))  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return {}
    prefix = f"{architecture}."
    return {key[len(prefix):]: key[len(prefix):] for key in metadata.read if key.startswith(prefix)}


def _query_pre_attn_scalar(architecture: str) -> float | None:
    """The ``query_pre_attn_scalar`` transformers gives a model of this GGUF architecture (Gemma 2 and 3: attention
    scaled by its −1/2 power; the GGUF reader leaves it at the config's default, 256); None where there is none."""
    import transformers

    config = {"gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig"}.get(architecture)
    return None if config is None else float(getattr(transformers, config)().query_pre_attn_scalar)


def _transformers_architecture(architecture: str, name: str) -> str:
    """The key of transformers' GGUF mappings for a ``general.architecture`` (as ``load_gguf_checkpoint`` renames it)."""
    if "llama" in architecture and "mistral" in name:
        return "mistral"
    if "t5" in architecture:
        return "umt5" if "umt5" in name.lower() else "t5"
    for part, renamed in (("qwen2moe", "qwen2_moe"), ("gpt_oss", "gpt_oss"), ("gpt-oss", "gpt_oss"),
                          ("qwen3moe", "qwen3_moe"), ("minimax-m2", "minimax_m2")):
        if part in architecture:
            return renamed
    return architecture


def _short(value: object) -> str:
    """``repr`` of a metadata value, a long list shortened."""
    if isinstance(value, list) and len(value) > 8:
        return f"{value[:8]!r}[:8] of {len(value)}"
    return repr(value)
