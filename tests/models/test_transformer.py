import warnings

import pytest
import torch

from models.transformer import SPECS, build_model


@pytest.mark.parametrize("name", ["tiny", "one-layer"])
@pytest.mark.parametrize("positional", ["absolute", "rotary", "none"])
def test_named_models_run_and_are_seeded(name, positional):
    first = build_model(name, d_vocab=50, positional=positional, seed=7)
    again = build_model(name, d_vocab=50, positional=positional, seed=7)
    tokens = torch.randint(50, (3, 5), generator=torch.Generator().manual_seed(0))
    logits = first(tokens)
    assert logits.shape == (3, 5, 50)
    assert torch.equal(logits, again(tokens))
    assert first.cfg.n_layers == SPECS[name].n_layers
    assert first.cfg.attn_only == (SPECS[name].d_mlp is None)


def test_no_positional_encoding_is_permutation_blind_at_the_last_position():
    model = build_model("one-layer", d_vocab=20, positional="none", seed=0)
    assert not model.pos_embed.W_pos.requires_grad and model.pos_embed.W_pos.abs().sum() == 0
    tokens = torch.tensor([[3, 5, 7, 9]])
    swapped = torch.tensor([[5, 3, 7, 9]])
    # without positions, attention at the last position sees a set of tokens, not a sequence
    assert torch.allclose(model(tokens)[0, -1], model(swapped)[0, -1], atol=1e-5)
    absolute = build_model("one-layer", d_vocab=20, positional="absolute", seed=0)
    assert not torch.allclose(absolute(tokens)[0, -1], absolute(swapped)[0, -1], atol=1e-5)


def test_paper_config_matches_the_paper():
    spec = SPECS["paper"]
    assert (spec.n_layers, spec.d_model, spec.n_heads) == (24, 768, 12)


def test_deprecation_warning_is_silenced_exactly_here():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model("one-layer", d_vocab=10)
    assert not [w for w in caught if "HookedTransformer is deprecated" in str(w.message)]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown model name 'huge'"):
        build_model("huge", d_vocab=10)
    with pytest.raises(ValueError, match="unknown positional encoding 'alibi'"):
        build_model("tiny", d_vocab=10, positional="alibi")


def test_building_a_model_leaves_the_callers_generators_as_they_were():
    """A TransformerLens config's seed reseeds torch, random and numpy globally (``set_seed_everywhere``); building
    a model used to leave ``random.random()`` at 0.134364 whatever the caller had drawn."""
    import random

    import numpy as np

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    first = build_model("tiny", d_vocab=20, seed=3)
    assert draws() == expected
    assert torch.equal(build_model("tiny", d_vocab=20, seed=3).W_E, first.W_E)  # its own seed still decides it
