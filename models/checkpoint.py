"""Atomic, checksummed checkpoints: ``step-NNNNNN.safetensors`` + ``step-NNNNNN.json``.

The tensors file holds the model's state dict (``model.*``) and the optimizer's per-parameter
state (``optim.<i>.<name>``); the JSON holds the step, the model card, the optimizer's
hyper-parameters, the training history so far, free metadata, the tensors file's SHA-256
(``sha256``) and its own (``meta_sha256``: SHA-256 of the JSON without that field, keys sorted).
Both are written with :func:`facts.io.atomic_write` (an exclusive temporary file, then a
rename), tensors first: a checkpoint exists only once its JSON does, and a tensors file or JSON whose hash differs is refused whole, so a
truncated or bit-flipped checkpoint is never half-loaded. A model whose parameters hold NaN or
inf is not saved at all: the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from facts.io import atomic_write, file_sha256, remove_stale_temporaries
from models.tensor_file import write_safetensors

_NAME = re.compile(r"^step-(\d{6,})\.json$")


def _save_tensors(tensors: dict[str, torch.Tensor], temporary: Path, target: Path) -> None:
    """The tensors in safetensors' format (:func:`models.tensor_file.write_safetensors`), written into ``temporary``
    (:func:`facts.io.atomic_write`'s, which a later run recognises and removes if this process dies). A failed
    write (a full disk) names no file: it is raised naming ``target``."""
    try:
        write_safetensors(tensors, temporary)
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(target)) from error


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not match the model."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: tensors verified against their checksum."""

    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any]
    path: Path


def _meta_sha256(record: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's JSON record without its ``meta_sha256`` field, keys sorted."""
    body = {k: v for k, v in record.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
) -> Path:
    """Write the checkpoint of ``step`` atomically; returns the JSON path.

    Raises :class:`CheckpointError`, writing nothing, when a parameter holds NaN or inf.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:06d}"
    state = _model_state(model)  # named as the checkpoint names them, under either TransformerLens line
    if not all(torch.isfinite(p.detach()).all() for p in model.parameters()):
        broken = [name for name, value in state.items() if value.is_floating_point() and not _is_constant_buffer(name)
                  and not torch.isfinite(value.detach()).all()]
        raise CheckpointError(
            f"step {step}: parameter(s) {broken[:5]} hold NaN or inf; checkpoint not written, the last good "
            f"one in {directory} is kept"
        )
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
    tensor_path = directory / f"{stem}.safetensors"
    atomic_write(tensor_path, lambda p: _save_tensors(tensors, p, tensor_path))
    record = {"step": step, "optimizer": optim_meta, "sha256": file_sha256(tensor_path), **meta}
    record = json.loads(json.dumps(record, default=str))  # exactly what a reader will parse
    record["meta_sha256"] = _meta_sha256(record)
    json_path = directory / f"{stem}.json"
    atomic_write(json_path, lambda p: p.write_text(json.dumps(record, indent=1)))
    return json_path


def remove_checkpoints(directory: str | os.PathLike[str]) -> None:
    """Delete every checkpoint file in ``directory``: JSON, tensors, orphans and temporary files.

    A fresh run calls this first, so a folder never mixes its checkpoints with a previous run's
    (whose later steps would otherwise pass for the newest checkpoint).
    """
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.glob("step-*"):
            if path.is_file() and path.suffix in (".json", ".safetensors"):
                path.unlink()
        remove_stale_temporaries(directory)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint JSON paths in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint by its JSON path (or its directory: the latest one), verifying the hash."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path}: holds no checkpoint (no step-NNNNNN.json)")
        path = found[-1]
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({error}); "
                              f"the file is truncated or corrupted") from None
    if not isinstance(meta, dict) or meta.get("meta_sha256") != _meta_sha256(meta):
        raise CheckpointError(f"{path}: checksum of the checkpoint metadata does not match; "
                              f"the file is truncated or corrupted")
    tensor_path = path.with_suffix(".safetensors")
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: tensors file of the checkpoint is missing")
    if file_sha256(tensor_path) != meta.get("sha256"):
        raise CheckpointError(
            f"{tensor_path}: checksum does not match {path.name}; the file is truncated or corrupted"
        )
    tensors = load_file(str(tensor_path))
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if meta.get("optimizer") is not None:
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        for key, value in meta["optimizer"]["scalars"].items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        optimizer_state = {"state": per_param, "param_groups": meta["optimizer"]["param_groups"]}
    return Checkpoint(int(meta["step"]), model_state, optimizer_state, meta, path)


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of ``model``: its state dict, in HookedTransformer's keys and shapes for a
    TransformerLens 4 native bridge (``models.backend.hooked_state_dict``), so either line reads it."""
    if "transformer_lens" not in sys.modules:  # not a TransformerLens model: no need to import it
        return model.state_dict()
    from models.backend import hooked_state_dict

    return hooked_state_dict(model)


def _is_constant_buffer(key: str) -> bool:
    """A HookedTransformer buffer every model of its config computes alike (causal mask, rotary tables):
    a checkpoint written under TransformerLens 4 does not carry it, one from 3.9 does."""
    return key.endswith((".attn.mask", ".attn.IGNORE", ".attn.rotary_sin", ".attn.rotary_cos"))


def restore_model(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Load weights into ``model``, with an error naming every mismatched tensor."""
    own = _model_state(model)
    saved = {k: v for k, v in checkpoint.model_state.items() if k in own or not _is_constant_buffer(k)}
    missing = sorted(k for k in set(own) - set(saved) if not _is_constant_buffer(k))
    unexpected = sorted(set(saved) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in saved.items()
        if k in own and v.shape != own[k].shape
    )
    if missing or unexpected or wrong:
        problems = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                    f"shape mismatch {wrong[:5]}" if wrong else ""]
        raise CheckpointError(
            f"{checkpoint.path}: checkpoint does not match the model config: " + "; ".join(p for p in problems if p)
        )
    state = {**own, **saved}  # a constant buffer the checkpoint lacks is the model's own
    if "transformer_lens" not in sys.modules:
        model.load_state_dict(state)
        return
    from models.backend import load_hooked_state_dict

    load_hooked_state_dict(model, state)
