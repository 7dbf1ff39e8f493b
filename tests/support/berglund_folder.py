"""A small folder in Berglund et al.'s experiment-1 layout, written from the built-in people world.

File names and the prompt/completion format are theirs (``p2d_prompts_train.jsonl``, ...,
``p2d_reverse_prompts_test_randomized.jsonl``); the sentences come from
:data:`facts.language.TRAIN_TEMPLATES` (training) and :data:`facts.language.TEST_TEMPLATES`
(held-out paraphrases and reverse questions).
"""

from __future__ import annotations

from pathlib import Path

from facts.berglund import experiment_files, save_prompt_completion_jsonl
from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, people_world, render


def _pair(template: str, given: str, answer: str) -> tuple[str, str]:
    rendered = render(template, given, answer)
    return rendered.prompt, rendered.answer


def write_experiment_folder(folder: Path, people: int = 2, groups: tuple[str, ...] = ("p2d", "d2p", "both"),
                            paraphrases: int = 3, seed: int = 0) -> Path:
    """``people`` per group; ``paraphrases`` training prompts per trained direction; every test
    template as held-out paraphrases; reverse tests with a randomized twin (the next person's answer)."""
    folder.mkdir(parents=True, exist_ok=True)
    world = people_world(n_per_group=people, seed=seed, groups=groups)
    for group in groups:
        facts = [f for f in world if f.group == group]
        directions = {"p2d": ("p2d",), "d2p": ("d2p",), "both": ("p2d", "d2p")}[group]

        def given_answer(fact, relation):
            return (fact.subject, fact.object) if relation == "p2d" else (fact.object, fact.subject)

        train = [_pair(t, *given_answer(f, r))
                 for f in facts for r in directions for t in TRAIN_TEMPLATES[r][:paraphrases]]
        test = [_pair(t, *given_answer(f, r)) for f in facts for r in directions for t in TEST_TEMPLATES[r]]
        names = experiment_files(group)
        save_prompt_completion_jsonl(train, folder / names["train"])
        save_prompt_completion_jsonl(test, folder / names["test"])
        if group in ("p2d", "d2p"):
            back = "d2p" if group == "p2d" else "p2d"
            reverse, randomized = [], []
            for number, fact in enumerate(facts):
                other = facts[(number + 1) % len(facts)]
                for template in TEST_TEMPLATES[back]:
                    given, answer = given_answer(fact, back)
                    reverse.append(_pair(template, given, answer))
                    randomized.append(_pair(template, given, given_answer(other, back)[1]))
            save_prompt_completion_jsonl(reverse, folder / names["reverse"])
            save_prompt_completion_jsonl(randomized, folder / names["randomized"])
    return folder
