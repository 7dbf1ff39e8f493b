"""A small folder in Berglund et al.'s experiment-1 layout, written from the built-in people world
by the product's own writer (:func:`facts.berglund.save_experiment_folder`, what ``revlens make-facts
people --format berglund`` writes): file names and the prompt/completion format are theirs; the
sentences come from :data:`facts.language.TRAIN_TEMPLATES` (training) and
:data:`facts.language.TEST_TEMPLATES` (held-out paraphrases and reverse questions).
"""

from __future__ import annotations

from pathlib import Path

from facts.berglund import save_experiment_folder
from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, people_world


def write_experiment_folder(folder: Path, people: int = 2, groups: tuple[str, ...] = ("p2d", "d2p", "both"),
                            paraphrases: int = 3, seed: int = 0) -> Path:
    """``people`` per group; ``paraphrases`` training prompts per trained direction; every test
    template as held-out paraphrases; reverse tests with a randomized twin (the next person's answer)."""
    world = people_world(n_per_group=people, seed=seed, groups=groups)
    return save_experiment_folder(world, folder, TRAIN_TEMPLATES, TEST_TEMPLATES, paraphrases)
