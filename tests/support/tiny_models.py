"""Tiny randomly initialised Hugging Face models of several decoder architectures, built offline.

Each is a config object (no download) over the first 2,048 tokens of SmolLM2's vocabulary
(``cut_vocabulary``: its byte-level BPE kept to the merges that make those tokens), initialised with a
fixed seed and a large ``initializer_range`` (0.3, so log-probabilities vary by several nats and
a wrong mask or rotary base shows), and saved with that tokenizer into a folder that
``models.pretrained.load(folder, backend=...)`` reads. Gemma 2 and Gemma 3 slide a 4-token window
(Gemma 3 with a full-attention layer and separate local/global RoPE bases), so any prompt of more
than four tokens goes past it.

``BACKENDS_BY_ARCHITECTURE`` is what TransformerLens wraps (through ``models.pretrained``; under 4.x,
which has no HookedTransformer, ``"hooked"`` is the bridge in compatibility mode, so every architecture
the bridge wraps has both):
an architecture missing a backend is refused with a ``PretrainedLoadError`` naming the backend to
use instead; the tests assert both the agreement and the refusal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from facts.tokens import Example, TokenizedFacts, collate
from models.backend import HookedTransformer, copy_model

VOCAB = 2048
WINDOW = 4
INIT = 0.3

BACKENDS_BY_ARCHITECTURE = {
    "gpt2": ("hooked", "bridge"),
    "neox": ("hooked", "bridge"),
    "qwen2": ("hooked", "bridge"),
    "llama": ("hooked", "bridge"),
    "mistral": ("hooked", "bridge"),
    "gemma": ("hooked", "bridge"),
    "gemma2": ("hooked", "bridge"),
    "gemma3": ("hooked", "bridge"),
    "olmo2": ("bridge",) if HookedTransformer is not None else ("hooked", "bridge"),  # TL 4: "hooked" is a bridge too
}
ARCHITECTURES = tuple(BACKENDS_BY_ARCHITECTURE)


def tiny_config(kind: str) -> transformers.PretrainedConfig:
    """A two- or three-layer config of ``kind`` (grouped-query where the architecture has it)."""
    shared = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=INIT,
    )
    gemma_window = dict(shared, num_hidden_layers=3, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16)
    configs = {
        "gpt2": lambda: transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=INIT
        ),
        "neox": lambda: transformers.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, rotary_pct=0.25, initializer_range=INIT,
        ),
        "qwen2": lambda: transformers.Qwen2Config(**shared),
        "llama": lambda: transformers.LlamaConfig(**shared),
        "mistral": lambda: transformers.MistralConfig(**shared),
        "gemma": lambda: transformers.GemmaConfig(**shared, head_dim=16),
        "gemma2": lambda: transformers.Gemma2Config(
            **gemma_window, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        ),
        "gemma3": lambda: transformers.Gemma3TextConfig(
            **gemma_window, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        ),
        "olmo2": lambda: transformers.Olmo2Config(**shared, pad_token_id=0),
    }
    return configs[kind]()


def perturbed(model):
    """A copy whose norm weights and biases are random (not 1 and 0 as at initialisation); ``copy_model``, so a
    bridge's copy holds no hooks that act on the original."""
    twin = copy_model(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in twin.named_parameters():
            kind = name.rsplit(".", 1)[-1]
            norm_weight = kind == "weight" and ("ln" in name or "norm" in name)  # the bridge's HF names
            if kind in ("w", "b", "bias") or kind.startswith("b_") or norm_weight:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return twin.eval()


def word_tokenizer(bos_token: str | None = None, add_bos_token: bool = False):
    """A whitespace word-level tokenizer over a few words, built offline, with or without a BOS token
    (``add_bos_token``: asked to add it, which transformers drops silently when there is none)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<bos>", "<eos>", "The", "capital", "of", "France", "is", "Paris", "."]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", bos_token=bos_token, add_bos_token=add_bos_token
    )


def cut_vocabulary(tokenizer: transformers.PreTrainedTokenizerFast, size: int = VOCAB):
    """``tokenizer`` (a byte-level BPE whose ids follow its merges, as SmolLM2's) kept to its first ``size`` ids:
    the same special tokens and bytes, and only the merges whose parts and result are among them. Any text still
    tokenizes (into more, shorter tokens where a longer one was cut), and every id is below ``size``, so a model
    over ``size`` tokens reads it: a tiny model's embedding and unembedding are then ``size`` rows, not 49,152."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = spec["model"]
    if bpe["type"] != "BPE":
        raise ValueError(f"cut_vocabulary needs a BPE tokenizer, not {bpe['type']}")
    bpe["vocab"] = {token: index for token, index in bpe["vocab"].items() if index < size}
    bpe["merges"] = [pair for pair in bpe["merges"] if {*pair, "".join(pair)} <= bpe["vocab"].keys()]
    spec["added_tokens"] = [token for token in spec["added_tokens"] if token["id"] < size]
    cut = Tokenizer.from_str(json.dumps(spec))
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=cut, **special)


def save_tiny(folder: Path, config: transformers.PretrainedConfig, tokenizer) -> Path:
    """Save a seeded random model of ``config`` with ``tokenizer``: a local Hugging Face folder."""
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class TinyModel:
    """One tiny architecture: its folder, transformers model and tokenizer, and TransformerLens models
    (``backends``: "hooked" and/or "bridge", as ``BACKENDS_BY_ARCHITECTURE`` says TransformerLens wraps it)."""

    name: str
    folder: Path
    hf: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    backends: dict

    @classmethod
    def build(cls, name: str, folder: Path, tokenizer) -> "TinyModel":
        from models.pretrained import load, load_hf

        save_tiny(folder, tiny_config(name), tokenizer)
        hf, hf_tokenizer = load_hf(folder, device="cpu")
        backends = {backend: load(folder, backend=backend, device="cpu") for backend in BACKENDS_BY_ARCHITECTURE[name]}
        return cls(name, folder, hf, hf_tokenizer, backends)


def padded_answers(tokenizer) -> TokenizedFacts:
    """Right-padded prompt → answer rows of different lengths, with three padding-only tail columns."""
    pairs = [("Ann Lee, known for", " writing the first book"), ("The capital of France", " is Paris"),
             ("a b c d e f", " g h")]
    examples = [Example(tuple(tokenizer(p).input_ids), tuple(tokenizer(a, add_special_tokens=False).input_ids), i,
                        "p2d", "train") for i, (p, a) in enumerate(pairs)]
    padded = collate(examples, pad_id=0)
    extra = torch.zeros((len(examples), 3), dtype=torch.long)
    return dataclasses.replace(padded, tokens=torch.cat([padded.tokens, extra], 1),
                               answer_mask=torch.cat([padded.answer_mask, extra.bool()], 1))
