"""Loading a pretrained model: wall time, peak resident memory and GGUF parses, per backend.

Each (model, backend) is loaded in a fresh Python process (peak RSS is per process), with one
torch thread and ``OMP_NUM_THREADS=1``, and reports:

* ``seconds``: wall time of ``models.pretrained.load(model, backend=...)`` (imports excluded), and of it
  ``user_s`` and ``kernel_s``, the process's CPU time in its own code and in the kernel's (writing a cache
  entry, :func:`models.tensor_file.write_safetensors`, is mostly the kernel's);
* ``peak_rss``: the process's peak resident set (``ru_maxrss``), and its ratio to the model's
  float32 size: ``rss_over_hf_float32`` (4 bytes × the parameter count of the transformers model,
  tied weights once: the goal, ≤ 2.5) and ``rss_over_float32`` (4 bytes × the loaded model's
  parameters: the hooked model keeps W_E and W_U apart, 1.6 GiB for Gemma 3 270M's 1.0 GiB);
* ``gguf_full_parses``: how often the file was parsed by ``gguf.GGUFReader`` (every field and
  tensor; transformers' path for Llama and Gemma 3 files, ~20 s for Gemma's 262k-token vocabulary);
  ``gguf_header_reads``: reads by transformers' fast metadata reader (0.1-2 s);
* ``n_ctx``: the context length the loaded model reports.

Each is measured three ways, one after the other (``--reads``), for the cache of GGUF reads
(:mod:`models.gguf_cache`): ``file``, the cache off (the file parsed and dequantised);
``first``, an empty cache (the same, then the entry written); ``cached``, that entry read.

Run: ``.venv/bin/python benchmarks/load_pretrained.py [--models gemma3-270m smollm2-135m]
[--backends hooked bridge] [--reads file first cached]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READS = ("file", "first", "cached")

CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
import gguf
import transformers.integrations.gguf.reader as gguf_reader
from models import pretrained

counts = {"full": 0, "header": 0}
def counted(function, kind):
    def wrapper(*args, **kwargs):
        counts[kind] += 1
        return function(*args, **kwargs)
    return wrapper
gguf.GGUFReader.__init__ = counted(gguf.GGUFReader.__init__, "full")
gguf_reader._read_metadata = counted(gguf_reader._read_metadata, "header")

hf_params = {}
def counting(function):
    def wrapper(hf_model, *args, **kwargs):
        hf_params["n"] = sum(p.numel() for p in hf_model.parameters())  # tied weights once
        return function(hf_model, *args, **kwargs)
    return wrapper
pretrained._hooked_config_and_weights = counting(pretrained._hooked_config_and_weights)
pretrained._to_bridge = counting(pretrained._to_bridge)

name, backend = sys.argv[1], sys.argv[2]
began, cpu = time.perf_counter(), os.times()
model = pretrained.load(name, backend=backend, device="cpu")
seconds, after = time.perf_counter() - began, os.times()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
n_params = sum(p.numel() for p in model.parameters())
print(json.dumps({"model": name, "backend": backend, "seconds": round(seconds, 1),
                  "user_s": round(after.user - cpu.user, 1), "kernel_s": round(after.system - cpu.system, 1),
                  "peak_rss_gib": round(peak / 2**30, 2), "float32_gib": round(4 * n_params / 2**30, 3),
                  "hf_float32_gib": round(4 * hf_params["n"] / 2**30, 3),
                  "gguf_full_parses": counts["full"], "gguf_header_reads": counts["header"], "n_ctx": model.cfg.n_ctx}))
"""


def measure(model: str, backend: str, cache: str) -> dict:
    """Load ``model`` on ``backend`` in a fresh process, with ``$REVLENS_GGUF_CACHE`` = ``cache``, and return
    its measurements."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", REVLENS_GGUF_CACHE=cache)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, backend], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"model": model, "backend": backend, "error": done.stderr.strip().splitlines()[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rss_over_float32"] = round(result["peak_rss_gib"] / result["float32_gib"], 2)
    result["rss_over_hf_float32"] = round(result["peak_rss_gib"] / result["hf_float32_gib"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    parser.add_argument("--backends", nargs="+", default=["hooked", "bridge"])
    parser.add_argument("--reads", nargs="+", choices=READS, default=list(READS))
    args = parser.parse_args()
    for model in args.models:
        for backend in args.backends:
            with tempfile.TemporaryDirectory() as cache:
                needed = set(args.reads) | ({"first"} if "cached" in args.reads else set())
                for read in (r for r in READS if r in needed):  # in order: "cached" reads the entry "first" wrote
                    result = measure(model, backend, "off" if read == "file" else cache)
                    if read in args.reads:
                        print(json.dumps({"read": read, **result}), flush=True)


if __name__ == "__main__":
    main()
