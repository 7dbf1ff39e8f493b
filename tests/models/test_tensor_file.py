"""models.tensor_file writes safetensors files byte for byte as safetensors does, in writes of at most 64 KiB
(facts.io.write_in_pieces), and the GGUF cache's entries are written through it: the same weights file as
transformers' own ``save_pretrained`` writes, on two architectures (one with tied embeddings)."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import save
from tiny_models import tiny_config

from facts import io as io_module
from models import gguf_cache
from models.tensor_file import write_safetensors


def mixed_tensors() -> dict[str, torch.Tensor]:
    """Every dtype written, a scalar, an empty tensor, a transposed (not contiguous) one and a name beyond ASCII."""
    torch.manual_seed(0)
    return {
        "z": torch.arange(3, dtype=torch.float16), "b.w": torch.randn(2, 2), "a": torch.arange(5),
        "c": torch.ones(1, dtype=torch.bfloat16), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5),
        "mask": torch.tensor([True, False]), "t": torch.randn(3, 4).t(), "d": torch.randn(2, dtype=torch.float64),
        "i": torch.arange(4, dtype=torch.int32), "h": torch.arange(3, dtype=torch.int16),
        "u": torch.arange(7, dtype=torch.uint8), "s": torch.arange(-3, 3, dtype=torch.int8),
        "名前.θ": torch.ones(2),  # written as UTF-8, not escaped
        **{f"u{bits}": torch.tensor([1, 2], dtype=getattr(torch, f"uint{bits}")) for bits in (16, 32, 64)},
    }


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_the_file_is_the_bytes_safetensors_gives(tmp_path, metadata):
    tensors = mixed_tensors()
    write_safetensors(tensors, tmp_path / "x.safetensors", metadata)
    expected = save({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata)
    assert (tmp_path / "x.safetensors").read_bytes() == expected


def test_no_single_write_is_larger_than_a_piece(tmp_path, monkeypatch):
    """A 1 MiB tensor goes to the file in writes of at most facts.io.WRITE_PIECE bytes, which add up to the file."""
    real_open, writes = open, []

    class Recording:
        def __init__(self, path, mode):
            self.handle = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            writes.append(bytes(data))
            return self.handle.write(data)

    monkeypatch.setattr(io_module, "open", Recording, raising=False)
    tensors = {"big": torch.randn(1 << 18), "small": torch.randn(3)}
    write_safetensors(tensors, tmp_path / "x.safetensors")
    assert max(map(len, writes)) == io_module.WRITE_PIECE and len(writes) > (1 << 20) // io_module.WRITE_PIECE
    assert b"".join(writes) == (tmp_path / "x.safetensors").read_bytes() == save(tensors)


def test_a_dtype_without_a_safetensors_name_is_refused_before_anything_is_written(tmp_path):
    tensors = {"fine": torch.zeros(2), "waves": torch.zeros(2, dtype=torch.complex64)}
    with pytest.raises(ValueError, match=r"tensor 'waves' is torch.complex64, which write_safetensors does not"):
        write_safetensors(tensors, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_a_gguf_cache_entry_holds_the_weights_file_save_pretrained_writes(tmp_path, kind):
    """The cache writes an entry with transformers' ``save_pretrained``, its weights through write_safetensors: the
    file is byte for byte the one transformers' own writer gives (Gemma 3's embedding tied to its unembedding, so
    stored once), and transformers' writer is its own again after, also after a block that raises."""
    from transformers import modeling_utils

    own = modeling_utils.safe_save_file
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(kind))
    model.save_pretrained(tmp_path / "transformers")
    with gguf_cache._weights_written_in_pieces():
        assert modeling_utils.safe_save_file is write_safetensors
        model.save_pretrained(tmp_path / "pieces")
    assert modeling_utils.safe_save_file is own
    assert ((tmp_path / "pieces" / "model.safetensors").read_bytes()
            == (tmp_path / "transformers" / "model.safetensors").read_bytes())
    with pytest.raises(KeyError), gguf_cache._weights_written_in_pieces():
        raise KeyError("a save that fails")
    assert modeling_utils.safe_save_file is own
