"""Float32 matrix products on the CPU: oneDNN's AVX-512 kernels where MKL would run slower ones.

PyTorch multiplies float32 matrices on the CPU with MKL. MKL sends its AVX-512 kernels to Intel CPUs
only: on an AMD CPU with AVX-512 it runs its AVX2 ones. oneDNN, the other kernel library inside PyTorch,
runs AVX-512 float32 kernels on any CPU that has the instructions. On the 2-core AMD EPYC this project is
measured on (``benchmarks/README.md``, "oneDNN's float32 kernels"), one thread, a 1024×576 by 576×1536
product: MKL 96-100 GFLOP/s, oneDNN 213-235 GFLOP/s; the celebrity scoring of SmolLM2 1.8× and of Gemma 3
2.0× faster, a SmolLM2 training step 1.7×.

PyTorch sends float32 products to oneDNN when ``torch.backends.mkldnn.matmul.fp32_precision`` is
``"bf16"``. That setting *allows* oneDNN to round the inputs to bfloat16 (8 significant bits), which it
does with Intel's AMX units; without them it keeps float32 (oneDNN 3.12 in PyTorch 2.13, measured here: products
of Gaussians 1.2e-4 from float64 where MKL's are 5.1e-5 and bfloat16-rounded inputs 0.28). So
:func:`float32_matmul` sets it only where it is a float32 switch and MKL is the slow library:

* an x86 CPU whose vendor is not Intel, with the AVX-512 subsets PyTorch asks for before it routes products
  to oneDNN (:data:`ONEDNN_NEEDS`; both read from ``/proc/cpuinfo``);
* whose oneDNN products, probed once per process (:func:`onednn_keeps_float32`) on a matrix product, a
  batched one and a matrix-vector one, agree with float64 to float32's accuracy: relative error
  ≤ :data:`FLOAT32_RELATIVE` of the largest entry, where bfloat16 inputs give ~4e-3;
* unless ``REVLENS_FLOAT32_MATMUL=mkl`` says otherwise.

Anywhere else (Intel, ARM, CUDA, a model on another device) nothing changes. The numbers are float32
sums in another order: the celebrity log-probabilities of SmolLM2 and Gemma 3 within 1.3e-4 and 1.2e-4
of MKL's over 512 answers (mean 1.5e-5 and 1.9e-5), the size of the hooked model's distance from
transformers'. Tiny token-world models are left on MKL: oneDNN's fixed cost per product (~10 µs) is more
than a 64×32 by 32×32 product takes.
"""

from __future__ import annotations

import functools
import os
import platform
from contextlib import contextmanager
from typing import Iterator

import torch

FLOAT32_RELATIVE = 1e-5
"""Largest error a probe product may have, relative to its largest entry, for the kernels to count as
float32 (measured here: ≤ 2e-6 for MKL and oneDNN alike; bfloat16-rounded inputs give ~4e-3)."""
ENVIRONMENT = "REVLENS_FLOAT32_MATMUL"
"""``mkl``: keep PyTorch's default kernels whatever the CPU."""
DEFAULT, ONEDNN = "PyTorch's default", "oneDNN float32 (AVX-512)"
ONEDNN_NEEDS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
"""The CPU flags without which PyTorch does not send float32 products to oneDNN under the setting."""


def _cpu_vendor_and_flags() -> tuple[str | None, frozenset[str]]:
    """``vendor_id`` (e.g. AuthenticAMD) and ``flags`` of ``/proc/cpuinfo``'s first CPU; (None, ∅) where it
    cannot be read."""
    vendor, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        return None, frozenset()
    return vendor, flags


@contextmanager
def onednn_products() -> Iterator[None]:
    """Within the block, float32 products go to oneDNN under ``fp32_precision = "bf16"``, whatever the CPU: on
    one with AMX, oneDNN rounds their inputs to bfloat16 (:func:`float32_matmul` checks before it asks)."""
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous


@functools.cache
def onednn_keeps_float32() -> bool:
    """Whether float32 products sent to oneDNN stay float32 on this CPU: a matrix product, a batched product
    and a matrix-vector product of seeded Gaussian inputs, each within :data:`FLOAT32_RELATIVE` (of its
    largest entry) of float64."""
    generator = torch.Generator().manual_seed(0)

    def gaussian(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    cases = ((gaussian(256, 576), gaussian(576, 384)), (gaussian(4, 64, 96), gaussian(4, 96, 64)),
             (gaussian(1, 576), gaussian(576, 2048)))
    with onednn_products():
        products = [a @ b for a, b in cases]
    for (a, b), product in zip(cases, products):
        exact = a.double() @ b.double()
        if float((product.double() - exact).abs().max()) > FLOAT32_RELATIVE * float(exact.abs().max()):
            return False
    return True


def uses_onednn(device: torch.device | str | None) -> bool:
    """Whether :func:`float32_matmul` sends float32 products on ``device`` to oneDNN (see the module doc)."""
    if torch.device(device or "cpu").type != "cpu" or os.environ.get(ENVIRONMENT, "").lower() == "mkl":
        return False
    vendor, flags = _cpu_vendor_and_flags()
    if platform.machine().lower() not in ("x86_64", "amd64") or vendor in (None, "GenuineIntel"):
        return False
    if not ONEDNN_NEEDS <= flags:  # PyTorch keeps the product on MKL, whatever the setting
        return False
    return torch.backends.mkldnn.is_available() and onednn_keeps_float32()


@contextmanager
def float32_matmul(device: torch.device | str | None) -> Iterator[str]:
    """Within the block, float32 products on ``device`` run on oneDNN where :func:`uses_onednn` says so; yields
    which kernels run (:data:`ONEDNN` or :data:`DEFAULT`: MKL on a CPU), for a run's summary. The setting is PyTorch's, for the
    whole process, and put back on leaving."""
    if not uses_onednn(device):
        yield DEFAULT
        return
    with onednn_products():
        yield ONEDNN
