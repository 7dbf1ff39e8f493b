"""Fresh ``revlens`` processes with the network made impossible, shared by the offline and the
cross-process determinism tests (each process runs once per test session).

Sockets are blocked in-process by a ``sitecustomize.py`` put first on ``PYTHONPATH``: creating an
internet socket, resolving a name or opening a connection records the attempt (with its stack)
in a log file and raises ``OSError``. Local (Unix) sockets stay allowed.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from analyses.runfolder import LOCK, MANIFEST, check_run

ROOT = Path(__file__).resolve().parents[2]
SOCKET_LOG = "REVLENS_SOCKET_LOG"

SITECUSTOMIZE = textwrap.dedent('''
    """Blocks the network for this process: every attempt is logged to $REVLENS_SOCKET_LOG and refused."""
    import os
    import socket
    import traceback

    _LOG = os.environ["REVLENS_SOCKET_LOG"]


    def _refuse(what):
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(what + "\\n" + "".join(traceback.format_stack(limit=12)) + "---\\n")
        raise OSError(f"network disabled by the offline test: {what}")


    class _NoInternetSocket(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
                _refuse(f"socket.socket(family={family})")
            super().__init__(family, type, proto, fileno)


    socket.socket = _NoInternetSocket
    socket.create_connection = lambda address, *a, **k: _refuse(f"socket.create_connection({address!r})")
    socket.getaddrinfo = lambda host, *a, **k: _refuse(f"socket.getaddrinfo({host!r})")
''')

CANARY = textwrap.dedent('''
    import socket
    try:
        socket.create_connection(("huggingface.co", 443), timeout=1)
    except OSError:
        pass
    else:
        raise SystemExit("the socket guard is not active")
''')
"""Run first in every guarded process: proves the guard is active (it must log exactly this)."""

RUN = textwrap.dedent('''
    from analyses.cli import main

    def revlens(*args):
        code = main([str(a) for a in args])
        assert code == 0, f"revlens {' '.join(map(str, args))} exited {code}"
''')


EXIT = "\nimport gc\ngc.freeze()\n"
"""Run last in every guarded process, as ``revlens`` itself ends (``analyses.cli.run``): its objects frozen, so the
interpreter's exit skips ~1.2 s of garbage collection over the modules the process imported."""


@dataclass(frozen=True)
class GuardedRun:
    """What one guarded process left behind: its output folder and its network attempts."""

    out: Path
    attempts: list[str]
    stdout: str


def run_guarded(out: Path, body: str, offline_env: bool) -> GuardedRun:
    """Run ``CANARY + RUN + body`` in a fresh Python with the socket guard; ``OUT`` is ``out``.

    ``offline_env`` also sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE; without
    it they are removed, so only the code itself keeps the process off the network.
    """
    out.mkdir(parents=True, exist_ok=True)
    guard = out / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = out / "network-attempts.log"
    log.write_text("")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env = {k: v for k, v in os.environ.items() if k not in offline}
    env.update(offline if offline_env else {})
    env.update({"PYTHONPATH": os.pathsep.join([str(guard), str(ROOT)]), SOCKET_LOG: str(log),
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    code = CANARY + RUN + f"OUT = __import__('pathlib').Path({str(out)!r})\n" + textwrap.dedent(body) + EXIT
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    attempts = [entry for entry in log.read_text().split("---\n") if entry.strip()]
    assert attempts and attempts[0].startswith("socket.create_connection(('huggingface.co', 443))"), attempts
    return GuardedRun(out, attempts[1:], result.stdout)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file a run wrote under ``folder`` (by relative path) and its bytes, once the folder is
    checked to hold one whole run (:func:`analyses.runfolder.check_run`); its manifest (run id,
    times, paths) and lock are left out."""
    assert check_run(folder) is not None, f"{folder}: no manifest"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in (MANIFEST, LOCK)}


def without(summary: bytes, fields: set[str]) -> dict:
    """A JSON summary without ``fields`` (wall times, paths)."""
    return {k: v for k, v in json.loads(summary).items() if k not in fields}


REVERSAL = ("--steps", "6", "--pairs", "40", "--eval-every", "2", "--quiet")
"""A small `revlens reproduce reversal` (tiny model, 40 pairs, 6 full-batch steps)."""


@functools.cache
def offline_session(base: Path) -> GuardedRun:
    """Process A (HF_*_OFFLINE set, sockets blocked): the main commands; SmolLM2 is loaded as a
    transformers model, a TransformerBridge (by check-asymmetry) and a HookedTransformer. The GGUF
    file is read once, under the guard, by the first load (``load_hf``, which keeps the model it read):
    the later two convert a copy (three reads cost 7 CPU s more: 38.6 → 31.7 CPU s for the offline test).

    ``reversal/`` and ``probe/`` (the probe of ``reversal/checkpoints``) are also the first half
    of the determinism comparison.
    """
    return run_guarded(base / "offline", f'''
        revlens("reproduce", "reversal", "--out", OUT / "reversal", *{REVERSAL!r})
        revlens("probe", "--model", OUT / "reversal/checkpoints", "--facts", OUT / "reversal/facts.jsonl",
                "--out", OUT / "probe", "--controls", "4")
        from models.pretrained import load, load_hf
        hf_model, _ = load_hf("smollm2-135m")
        revlens("check-asymmetry", "--limit", "5", "--controls", "3", "--out", OUT / "asymmetry", "--quiet")
        hooked = load("smollm2-135m", backend="hooked")
        print("loaded", type(hooked).__name__, type(hf_model).__name__)
    ''', offline_env=True)


@functools.cache
def second_session(base: Path) -> GuardedRun:
    """Process B (no HF_*_OFFLINE variables, sockets blocked): the same reversal run again, and
    the probe of process A's checkpoint and of its own."""
    first = offline_session(base).out
    return run_guarded(base / "second", f'''
        revlens("reproduce", "reversal", "--out", OUT / "reversal", *{REVERSAL!r})
        FIRST = __import__("pathlib").Path({str(first)!r})
        revlens("probe", "--model", FIRST / "reversal/checkpoints", "--facts", FIRST / "reversal/facts.jsonl",
                "--out", OUT / "probe-of-first", "--controls", "4")
        revlens("probe", "--model", OUT / "reversal/checkpoints", "--facts", OUT / "reversal/facts.jsonl",
                "--out", OUT / "probe", "--controls", "4")
    ''', offline_env=False)
