"""Questions asked as multiple choice (Lin et al. 2024) beside open completion: does the reversal
curse hold when the right answer is offered?

Each question of the chosen settings (:data:`MC_SETTINGS`) is asked with its right answer and K − 1
other answers of its pool (names for a name, descriptions for a description), drawn with the seed,
shuffled, and asked in each of the K cyclic rotations of that order
(:func:`facts.questions.multiple_choice_orders`): the right answer once under every letter. A
question's score is p(right letter) among the K letters (:mod:`probes.multiple_choice`) and whether
the model's most likely letter is right, both averaged over its K orders; chance is 1 / K.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import pandas as pd
import torch

from analyses.stats import ci95_half_width
from facts.language import bos_prefix
from facts.questions import LETTERS, QuestionSet, multiple_choice_orders
from probes.multiple_choice import letter_probabilities, letter_tokens

MC_SETTINGS = ("forward_heldout_paraphrase", "reverse")
"""Settings asked as multiple choice: the trained direction in new words, and the held-out reverse."""


def options_count(questions: QuestionSet, k: int, settings: Sequence[str] = MC_SETTINGS) -> int:
    """K: ``k`` options, or fewer when a pool of the asked questions holds fewer distinct answers (≥ 2);
    a K below 2, or above the letters, is refused."""
    if not 2 <= k <= len(LETTERS):
        raise ValueError(f"multiple choice asks 2…{len(LETTERS)} options, not {k}")
    pools = questions.pool_answers()
    asked = {q.pool for q in questions.questions if q.setting in settings}
    if not asked:
        raise ValueError(f"no question of the settings {list(settings)} to ask as multiple choice")
    smallest = min(len(pools[pool]) for pool in asked)
    if smallest < 2:
        raise ValueError(f"a pool of answers holds {smallest} answer: no wrong option to offer")
    return min(k, smallest)


def multiple_choice_table(model: Any, questions: QuestionSet, tokenizer: Any, k: int = 4, seed: int = 0,
                          settings: Sequence[str] = MC_SETTINGS) -> pd.DataFrame:
    """One row per question of ``settings`` and option order: the letters' probabilities (p_A, ...),
    the right letter, p_correct, the chosen (most likely) letter and whether it is right."""
    k = options_count(questions, k, settings)
    letters = LETTERS[:k]
    pools = questions.pool_answers()
    prefix = bos_prefix(tokenizer)
    records, prompts = [], []
    for number, question in enumerate(questions.questions):
        if question.setting not in settings:
            continue
        others = [a for a in pools[question.pool] if a != question.completion]
        distractors = random.Random(f"{seed}:multiple-choice:{number}").sample(others, k - 1)
        for rotation, asked in enumerate(multiple_choice_orders(question, distractors, seed, letters)):
            prompts.append(prefix + tuple(tokenizer.encode(asked.prompt, add_special_tokens=False)))
            records.append({"question": number, "key": question.key, "fact": question.fact, "group": question.group,
                            "setting": question.setting, "direction": question.direction, "split": question.split,
                            "answer": question.completion.strip(), "order": rotation,
                            "correct_letter": letters[asked.correct], "_correct": asked.correct})
    probabilities = letter_probabilities(model, prompts, letter_tokens(tokenizer, letters))
    table = pd.DataFrame(records)
    for column, letter in enumerate(letters):
        table[f"p_{letter}"] = probabilities[:, column].numpy()
    correct = torch.tensor(table.pop("_correct").to_numpy(dtype="int64"))
    table["p_correct"] = probabilities[torch.arange(len(table)), correct].numpy()
    chosen = probabilities.argmax(-1)
    table["chosen_letter"] = [letters[c] for c in chosen.tolist()]
    table["correct"] = (chosen == correct).numpy()
    table["n_options"] = k
    return table


def multiple_choice_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per group and setting: questions, mean p(right letter) with its 95% interval across questions
    (each question's mean over its K orders first) and accuracy of the argmax; and K with chance 1 / K."""
    k = int(table.n_options.iloc[0])
    out: dict[str, Any] = {"options": k, "chance": 1 / k, "groups": {}}
    per_question = table.groupby(["group", "setting", "question"], sort=False)[["p_correct", "correct"]].mean()
    for (group, setting), part in per_question.groupby(level=[0, 1], sort=False):
        mean, half = float(part.p_correct.mean()), ci95_half_width(part.p_correct)
        out["groups"].setdefault(group, {})[setting] = {
            "n": int(len(part)), "p_correct": mean, "p_correct_ci95": [mean - half, mean + half],
            "accuracy": float(part.correct.mean())}
    return out


def format_multiple_choice(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Lines per group and setting: p(right letter) and accuracy per stage (``{"before": summary, ...}``)."""
    first = next(iter(stages.values()))
    lines = [f"multiple choice ({first['options']} options, every order; chance {first['chance']:.2f}): "
             "p(right letter) among the letters, accuracy of the most likely letter"]
    for group, settings in first["groups"].items():
        for setting in settings:
            shown = "; ".join(f"{stage} {summary['groups'][group][setting]['p_correct']:.3f} / "
                              f"{summary['groups'][group][setting]['accuracy']:.3f}" for stage, summary in stages.items())
            lines.append(f"  {group} {setting.replace('_', ' ')} (n {settings[setting]['n']}): {shown}")
    return lines
