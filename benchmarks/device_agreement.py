"""The pretrained-model commands on two devices, and their tables side by side (CPU against CUDA).

No pretrained model fits a lent GPU machine that cannot install packages (SmolLM2's package alone is 94 MiB), so
the commands run on two tiny random Hugging Face folders instead, a Llama and a Gemma 3 (sliding window, local and
global RoPE bases) over SmolLM2's tokenizer, built as ``tests/support/tiny_models.py`` builds the suite's:

* ``build MODELS``: write the two folders (here, where SmolLM2's package is installed; ~45 MB).
* ``run MODELS OUT --device D``: on ``D`` into ``OUT``, on both backends: ``check-asymmetry`` (20 celebrity pairs,
  6 controls) and ``probe`` of the people world with head and attribution patching, the logit lens, multiple
  choice and (hooked) tracing; then ``finetune-facts`` (4 people, 2 epochs) with tracing and multiple choice, once
  whole and once with LoRA (rank 2) and reverse training. Each command's last line is printed; a command that fails
  is reported and the others still run.
* ``compare A B [--tolerance T]``: every CSV under ``A`` against the one at the same place under ``B``: the same
  files, rows, text and missing values (else exit status 1), and the largest |Δ| of each numeric column (the
  largest one printed per file; with ``--tolerance``, one over T fails too). Before
  training the two devices differ by float32 sums in another order (session 30: ≤ 7.6e-5 in a log-probability);
  after training, by what a few steps make of that.

Session 30 (an H200): ``build`` and ``run … --device cpu`` here, the folders carried, ``run … --device cuda`` there,
``compare`` here (``benchmarks/README.md``, "A fourth CPU, with AMX, and a lent GPU").

Run: ``.venv/bin/python benchmarks/device_agreement.py build /tmp/models``, then ``… run /tmp/models /tmp/cpu
--device cpu`` and ``… compare /tmp/cuda /tmp/cpu``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("llama", "gemma3")


def build(models: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tiny_models import save_tiny, tiny_config

    from models.pretrained import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    for name in ARCHITECTURES:
        save_tiny(models / name, tiny_config(name), tokenizer)
        print(f"wrote {models / name}")


def _revlens(*args: str) -> bool:
    """One ``revlens`` command in a fresh process; prints the command and its last line; whether it succeeded."""
    print("==", " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "analyses.cli", *args], cwd=ROOT, capture_output=True, text=True)
    lines = (done.stdout if done.returncode == 0 else done.stderr).strip().splitlines()  # stderr: progress bars
    print("  ", lines[-1] if lines else "(no output)", "" if done.returncode == 0 else f"[exit {done.returncode}]")
    return done.returncode == 0


def run(models: Path, out: Path, device: str, threads: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    common = ("--device", device, "--threads", str(threads))
    people = out / "people.jsonl"
    ok = [_revlens("make-facts", "people", "--size", "3", "--out", str(people))]
    for name in ARCHITECTURES:
        folder = str(models / name)
        for backend in ("bridge", "hooked"):
            ok.append(_revlens("check-asymmetry", "--model", folder, "--backend", backend, "--limit", "20",
                               "--controls", "6", "--quiet", *common, "--out", str(out / f"check-{name}-{backend}")))
            tracing = ("--tracing", "--tracing-facts", "2") if backend == "hooked" else ()  # the bridge has none
            ok.append(_revlens("probe", "--model", folder, "--backend", backend, "--facts", str(people), "--controls",
                               "2", "--limit", "6", *tracing, "--logit-lens", "--attribution-patching",
                               "--head-patching", "--multiple-choice", "3", *common,
                               "--out", str(out / f"probe-{name}-{backend}")))
    finetune = ("finetune-facts", "--model", str(models / "llama"), "--people", "4", "--epochs", "2", "--controls", "3",
                "--tracing-facts", "1", "--multiple-choice", "2", "--quiet", *common)
    ok.append(_revlens(*finetune, "--out", str(out / "finetune-llama")))
    ok.append(_revlens(*finetune, "--lora-rank", "2", "--mitigation", "reverse-training",
                       "--out", str(out / "finetune-llama-lora-reverse-training")))
    print(f"{sum(ok)} of {len(ok)} commands succeeded on {device}")
    return 0 if all(ok) else 1


def compare(first: Path, second: Path, tolerance: float | None = None) -> int:
    """Exit status 1 when a CSV is in one folder only, differs in shape, text or missing values, or (``tolerance``)
    differs in a number by more than that; every file's largest |Δ| is printed either way."""
    import numpy as np
    import pandas as pd

    problems = 0
    for path in sorted(second.rglob("*.csv")):
        if not (first / path.relative_to(second)).exists():
            print(f"{path.relative_to(second)}: not in {first}")
            problems += 1
    for path in sorted(first.rglob("*.csv")):
        other = second / path.relative_to(first)
        if not other.exists():
            print(f"{path.relative_to(first)}: not in {second}")
            problems += 1
            continue
        a, b = pd.read_csv(path), pd.read_csv(other)
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            print(f"{path.relative_to(first)}: {a.shape} against {b.shape}")
            problems += 1
            continue
        numeric = [c for c in a.columns if a[c].dtype.kind in "fiu" and b[c].dtype.kind in "fiu"]
        text = [c for c in a.columns if c not in numeric and not a[c].astype(str).equals(b[c].astype(str))]
        text += [c for c in numeric if not np.array_equal(a[c].isna().to_numpy(), b[c].isna().to_numpy())]  # NaN apart
        gaps = {c: np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)) for c in numeric}
        gaps = {c: float(g[np.isfinite(g)].max()) for c, g in gaps.items() if np.isfinite(g).any()}
        worst = max(gaps, key=gaps.get, default=None)
        print(f"{path.relative_to(first)}: {len(a)} rows; largest |Δ| "
              + (f"{gaps[worst]:.2e} ({worst})" if worst else "-") + (f"; text differs in {text}" if text else ""))
        over = tolerance is not None and worst is not None and gaps[worst] > tolerance
        if over:
            print(f"  over the tolerance {tolerance:g}: {', '.join(c for c, g in gaps.items() if g > tolerance)}")
        problems += bool(text) or over
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build").add_argument("models", type=Path)
    runs = commands.add_parser("run")
    runs.add_argument("models", type=Path)
    runs.add_argument("out", type=Path)
    runs.add_argument("--device", required=True)
    runs.add_argument("--threads", type=int, default=2)
    compares = commands.add_parser("compare")
    compares.add_argument("first", type=Path)
    compares.add_argument("second", type=Path)
    compares.add_argument("--tolerance", type=float, default=None,
                          help="also fail when a number differs by more than this (default: print the |Δ| only)")
    args = parser.parse_args()
    if args.command == "build":
        build(args.models)
        return 0
    if args.command == "run":
        return run(args.models, args.out, args.device, args.threads)
    return compare(args.first, args.second, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
