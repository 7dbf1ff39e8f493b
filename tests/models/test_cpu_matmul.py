"""Float32 products on oneDNN's kernels (:mod:`models.cpu_matmul`): whatever kernels
:func:`models.cpu_matmul.float32_matmul` picks on the machine running the tests, the products inside it
are float32 (forward and backward, every product form a model uses), the setting is put back, the opt-out
and non-CPU devices keep PyTorch's default (the celebrity scores of SmolLM2 and Gemma 3 under both kernels:
``tests/probes/test_shared_prompt.py``). The speed is measured in ``benchmarks/scoring_throughput.py``."""

from __future__ import annotations

import pytest
import torch

from models import cpu_matmul
from models.cpu_matmul import DEFAULT, ENVIRONMENT, FLOAT32_RELATIVE, ONEDNN, float32_matmul, uses_onednn


def _relative_error(product: torch.Tensor, exact: torch.Tensor) -> float:
    product, exact = product.detach().double(), exact.detach()
    return float((product - exact).abs().max() / exact.abs().max())


def test_products_inside_the_block_are_float32_forward_and_backward():
    """Products of the shapes SmolLM2's and Gemma 3's passes make (a block's linear layers, a batched
    attention product, an unembedding, one row against a 49,152-token vocabulary) and their gradients,
    each within float32's accuracy of float64, which bfloat16 inputs (8 significant bits) would miss by ~400×."""
    generator = torch.Generator().manual_seed(1)
    cases = [(96, 576, 1536), (7, 640, 2048), (1, 576, 49152), (33, 640, 16384)]
    with float32_matmul("cpu") as kernels:
        assert kernels in (DEFAULT, ONEDNN)
        for m, k, n in cases:
            a = torch.randn(m, k, generator=generator, requires_grad=True)
            b = torch.randn(n, k, generator=generator, requires_grad=True)
            out = torch.nn.functional.linear(a, b)
            assert _relative_error(out, a.double() @ b.double().T) < FLOAT32_RELATIVE
            upstream = torch.randn(m, n, generator=generator)
            out.backward(upstream)
            assert _relative_error(a.grad, upstream.double() @ b.double()) < FLOAT32_RELATIVE
            assert _relative_error(b.grad, upstream.double().T @ a.double()) < FLOAT32_RELATIVE
        q = torch.randn(2, 9, 40, 64, generator=generator)
        k = torch.randn(2, 9, 40, 64, generator=generator)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        assert _relative_error(scores, torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double())) < FLOAT32_RELATIVE


def test_the_setting_is_put_back_even_after_an_error():
    before = torch.backends.mkldnn.matmul.fp32_precision
    with pytest.raises(RuntimeError, match="inside"):
        with float32_matmul("cpu"):
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    with float32_matmul("cpu") as kernels:
        assert (torch.backends.mkldnn.matmul.fp32_precision != before) == (kernels == ONEDNN)
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@pytest.mark.parametrize("device", ["meta", "cuda:0"])
def test_other_devices_and_the_opt_out_keep_pytorchs_kernels(device, monkeypatch):
    before = torch.backends.mkldnn.matmul.fp32_precision
    with float32_matmul(device) as kernels:
        assert kernels == DEFAULT and torch.backends.mkldnn.matmul.fp32_precision == before
    monkeypatch.setenv(ENVIRONMENT, "mkl")
    assert not uses_onednn("cpu")
    with float32_matmul("cpu") as kernels:
        assert kernels == DEFAULT and torch.backends.mkldnn.matmul.fp32_precision == before


def test_an_intel_unknown_or_avx2_cpu_keeps_mkl(monkeypatch):
    """MKL's own AVX-512 kernels run on Intel CPUs, a CPU that cannot be named is not guessed at, and without
    AVX-512 PyTorch would keep the products on MKL (the summary would name kernels that did not run)."""
    avx512 = cpu_matmul.ONEDNN_NEEDS | {"avx2", "fma"}
    for vendor, flags in (("GenuineIntel", avx512), (None, frozenset()), ("AuthenticAMD", frozenset({"avx2", "fma"}))):
        monkeypatch.setattr(cpu_matmul, "_cpu_vendor_and_flags", lambda answer=(vendor, flags): answer)
        assert not uses_onednn("cpu")
        with float32_matmul("cpu") as kernels:
            assert kernels == DEFAULT


def test_an_amd_cpu_with_avx512_gets_onednn_exactly_where_its_products_stay_float32(monkeypatch):
    """The branch the machine running the tests may never take: an x86 CPU not Intel's, with the AVX-512 subsets.
    oneDNN is used there exactly when its products stay float32 (:func:`cpu_matmul.onednn_keeps_float32`); then the
    block sets the switch, its products are float32 and the setting is put back; where oneDNN rounds the inputs to
    bfloat16 (a CPU with AMX), the guard's reason holds: a product under the switch misses float32's accuracy."""
    monkeypatch.setattr(cpu_matmul, "_cpu_vendor_and_flags",
                        lambda: ("AuthenticAMD", cpu_matmul.ONEDNN_NEEDS | {"avx2", "fma"}))
    monkeypatch.setattr(cpu_matmul.platform, "machine", lambda: "x86_64")
    keeps = torch.backends.mkldnn.is_available() and cpu_matmul.onednn_keeps_float32()
    assert uses_onednn("cpu") == keeps
    before = torch.backends.mkldnn.matmul.fp32_precision
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(96, 576, generator=generator), torch.randn(576, 1536, generator=generator)
    exact = a.double() @ b.double()
    if keeps:
        with float32_matmul("cpu") as kernels:
            assert kernels == ONEDNN and torch.backends.mkldnn.matmul.fp32_precision == "bf16"
            assert _relative_error(a @ b, exact) < FLOAT32_RELATIVE
        assert torch.backends.mkldnn.matmul.fp32_precision == before
    else:
        with cpu_matmul.onednn_products():
            assert _relative_error(a @ b, exact) > FLOAT32_RELATIVE  # bfloat16 inputs: why the guard said no
        with float32_matmul("cpu") as kernels:
            assert kernels == DEFAULT and torch.backends.mkldnn.matmul.fp32_precision == before
    for machine in ("aarch64", "arm64"):  # an ARM CPU is never sent there
        monkeypatch.setattr(cpu_matmul.platform, "machine", lambda name=machine: name)
        assert not uses_onednn("cpu")
