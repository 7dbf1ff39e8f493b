"""Fine-tuning on the transformers model itself, then probing it as a HookedTransformer.

``revlens finetune-facts`` trains the Hugging Face model (:class:`CausalLM`, the trainer's
``tokens → logits`` interface) and converts the trained weights to a ``HookedTransformer`` with
the loader's own converter (:func:`models.pretrained.to_hooked`) for evaluation and probing.
Why not train the HookedTransformer directly: on the same weights and batch its forward and
backward pass is slower than transformers' (``benchmarks/finetune_throughput.py``), it unties
the embedding from the unembedding (SmolLM2 and Gemma tie them: fine-tuning the hooked model
trains two matrices where the model has one), and LoRA adapters (``peft``) wrap HF modules.

Three costs are cut without changing any number the loss or the evaluation reads:

* :meth:`CausalLM.logits_at` runs the unembedding only at the positions that predict an
  answer token (a forward pre-hook on the output embedding gathers those hidden states), so
  the d_model × d_vocab product and its gradient cost O(answer tokens), not O(batch · pos);
  what the model does after the unembedding (Gemma's soft cap) is elementwise and unchanged;
* the trainer's loss and evaluation (:func:`models.scoring.answer_logits`, which reads
  :meth:`CausalLM.logits_at`) run on a batch's columns up to its last answer-predicting one:
  neither the last answer token (a target only) nor the padding after it is an input.

LoRA (:func:`add_lora`, :func:`merge_lora`): ``W' = W + (α / r) · B A`` on the chosen linear
layers of every decoder block, ``A ∈ R^{r×d_in}``, ``B ∈ R^{d_out×r}`` (B starts at 0, so the
adapted model starts as the original); only A and B train. Merging writes ``W'`` into the base
weights (``merge_and_unload``), so the converted HookedTransformer is an ordinary one.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformers import PreTrainedModel

from models.scoring import head_reads


class CausalLM(nn.Module):
    """A transformers causal LM (or a ``peft`` model around one) as ``tokens → logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def d_vocab(self) -> int:
        """Vocabulary size (the trainer refuses token ids outside it)."""
        return int(self.model.get_input_embeddings().num_embeddings)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.model(input_ids=tokens).logits

    def logits_at(
        self, tokens: Int[Tensor, "batch pos"], positions: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, "n d_vocab"]:
        """``forward(tokens)[positions]`` (row-major), with the unembedding run at those positions alone."""
        with head_reads(self.model.get_output_embeddings(), positions):
            return self.model(input_ids=tokens).logits[0]


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, first to last: ``.blocks`` of a HookedTransformer, else the
    ``ModuleList`` of ``config.num_hidden_layers`` modules in a transformers model."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return blocks
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"{type(model).__name__} has no list of transformer blocks (HookedTransformer .blocks, or a "
                     "transformers model's decoder layers)")


def lora_target_names(model: PreTrainedModel) -> list[str]:
    """Names (the last part of the module path) of the linear layers inside the decoder blocks:
    what ``--lora-targets`` may name (e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    down_proj for Llama)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in decoder_blocks(model).named_modules()
                   if isinstance(module, nn.Linear)})


def check_lora_options(rank: int, alpha: float | None) -> None:
    """Refuse a LoRA rank below 1 or an alpha that is not a finite number > 0 (an infinite scale times the adapters'
    zero start is NaN: every loss NaN), before any model loads."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer ≥ 1, got {rank!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")


def add_lora(model: PreTrainedModel, rank: int, alpha: float | None = None, targets: Sequence[str] | None = None,
             seed: int = 0) -> tuple[nn.Module, list[str]]:
    """Wrap ``model`` (in place) with LoRA adapters of ``rank`` on the block linear layers named
    ``targets`` (None: all of them, :func:`lora_target_names`); ``alpha`` defaults to 2·rank.
    Every other parameter is frozen. The adapters' random start (peft's: A drawn, B zero) is drawn from
    torch's generator seeded with ``seed`` (the caller's generator left as it was), so the same seed gives
    the same run in any process. Returns the peft model and the targets used; an unknown name is
    refused with the valid ones listed."""
    from peft import LoraConfig, get_peft_model

    check_lora_options(rank, alpha)
    valid = lora_target_names(model)
    if not valid:
        raise ValueError(f"{type(model).__name__}'s blocks hold no torch Linear layer for LoRA to adapt (GPT-2's "
                         f"projections are Conv1D); train every parameter, or the last blocks (--trainable-blocks N)")
    chosen = list(valid if targets is None else dict.fromkeys(targets))
    unknown = [name for name in chosen if name not in valid]
    if unknown or not chosen:
        raise ValueError(f"LoRA targets {unknown or chosen} are not linear layers of {type(model).__name__}'s blocks; "
                         f"valid: {', '.join(valid)}")
    config = LoraConfig(r=rank, lora_alpha=float(2 * rank if alpha is None else alpha), target_modules=chosen,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # peft draws A on the CPU, before any move
        torch.default_generator.manual_seed(seed)  # the CPU's alone: torch.manual_seed would reseed every GPU's too
        return get_peft_model(model, config), chosen


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """The plain transformers model with every adapter merged into its weights (W + (α/r)·B A)."""
    return model.merge_and_unload()


__all__ = ["CausalLM", "add_lora", "check_lora_options", "decoder_blocks", "lora_target_names", "merge_lora"]
