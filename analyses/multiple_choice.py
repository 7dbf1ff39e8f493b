"""Questions asked as multiple choice (Lin et al. 2024) beside open completion: does the reversal
curse hold when the right answer is offered?

Each question of the chosen settings (:data:`MC_SETTINGS`) is asked with its right answer and K − 1
other answers of its pool (names for a name, descriptions for a description), drawn with the seed,
shuffled, and asked in each of the K cyclic rotations of that order
(:func:`facts.questions.multiple_choice_orders`): every option once under every letter; the K
prompts share their stem (:func:`shared_length`), which runs once, then each order from its cache.
With p_r(ℓ) the probability of letter ℓ among the K letters in order r (:mod:`probes.multiple_choice`)
and ℓ_r(o) the letter of option o in order r, two scores:

* **raw** (per order, then averaged over the K orders): p_r(ℓ_r(right)) and whether argmax_ℓ p_r(ℓ)
  is the right letter. A model that prefers one letter whatever the options say (a small model
  does: SmolLM2-135M picks one letter in almost every prompt) scores exactly chance 1 / K on both,
  since the right answer sits under its favourite letter in one order of K.
* **debiased** (one per question): each option's log-probability averaged over the orders,

      s_o = (1/K) Σ_r log p_r(ℓ_r(o)),      q_o = exp(s_o) / Σ_o' exp(s_o'),

  q_right and whether the right option has the largest s (a tie of n options counts 1/n). Write the
  model's letter log-probabilities as log p_r(ℓ) = b_ℓ + c_r(o at ℓ) − log Z_r with b a letter
  prior that does not depend on the options: every option sits under every letter once, so each s_o
  holds the same (1/K) Σ_ℓ b_ℓ and the same (1/K) Σ_r log Z_r, and q is softmax of the content terms
  alone. Hence an exact identity: adding any constant b_ℓ to letter ℓ's logit in every prompt
  leaves s − mean(s), q and the debiased choice unchanged; so does asking the K orders in another
  cyclic rotation (the same K prompts). This is the cyclic-permutation debiasing of Zheng et al.
  2024 ("Large language models are not robust multiple choice selectors", arXiv 2309.03882), taken
  in log space (they average probabilities), where the cancellation is exact. Lin et al. read the letter a chat model writes after "I choose option", one random
  order per question, without debiasing; chance is 1 / K for all four scores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from facts.language import bos_prefix
from facts.questions import LETTERS, QuestionSet, multiple_choice_orders
from probes.multiple_choice import letter_probabilities, letter_tokens
from probes.stats import PROBABILITY, mean_ci95

MC_SETTINGS = ("forward_heldout_paraphrase", "reverse")
"""Settings asked as multiple choice: the trained direction in new words, and the held-out reverse."""


def options_count(questions: QuestionSet, k: int, settings: Sequence[str] = MC_SETTINGS) -> int:
    """K: ``k`` options, or fewer when an asked question has fewer wrong options
    (:meth:`facts.questions.QuestionSet.wrong_answers`) than
    K − 1 (at least one); a K below 2, or above the letters, is refused."""
    if not 2 <= k <= len(LETTERS):
        raise ValueError(f"multiple choice asks 2…{len(LETTERS)} options, not {k}")
    wrong = [len(others) for q, others in zip(questions.questions, questions.wrong_answers()) if q.setting in settings]
    if not wrong:
        raise ValueError(f"no question of the settings {list(settings)} to ask as multiple choice")
    if min(wrong) < 1:
        raise ValueError("a question's pool holds no wrong answer to offer beside its right ones")
    return min(k, min(wrong) + 1)


@dataclass
class MultipleChoicePrompts:
    """What :func:`multiple_choice_table` asks: ``prompts[i]`` (token ids, the model's BOS rule) with
    ``stems[i]`` tokens shared by its question's K orders (:func:`shared_length`), one ``records[i]`` of
    table columns each (``_correct``: the right option's index), under ``letters``."""

    letters: str
    prompts: list[tuple[int, ...]]
    stems: list[int]
    records: list[dict[str, Any]]


def multiple_choice_prompts(questions: QuestionSet, tokenizer: Any, k: int = 4, seed: int = 0,
                            settings: Sequence[str] = MC_SETTINGS) -> MultipleChoicePrompts:
    """Each question of ``settings`` with its right answer and K − 1 others of its pool (drawn with
    ``seed``), in each of the K cyclic orders (:func:`facts.questions.multiple_choice_orders`), tokenised. No other
    option is a right answer to the same prompt (a parent of two children: the other child is no wrong option)."""
    k = options_count(questions, k, settings)
    letters = LETTERS[:k]
    prefix = bos_prefix(tokenizer)
    asked = MultipleChoicePrompts(letters, [], [], [])
    for number, (question, others) in enumerate(zip(questions.questions, questions.wrong_answers())):
        if question.setting not in settings:
            continue
        distractors = random.Random(f"{seed}:multiple-choice:{number}").sample(others, k - 1)
        orders = multiple_choice_orders(question, distractors, seed, letters)
        encoded = [prefix + tuple(tokenizer.encode(order.prompt, add_special_tokens=False)) for order in orders]
        asked.prompts += encoded
        asked.stems += [shared_length(encoded)] * len(encoded)
        for rotation, order in enumerate(orders):
            asked.records.append({
                "question": number, "key": question.key, "fact": question.fact, "group": question.group,
                "setting": question.setting, "direction": question.direction, "split": question.split,
                "answer": question.completion.strip(), "order": rotation,
                "correct_letter": letters[order.correct], "_correct": order.correct,
                **{f"option_{letter}": option.strip() for letter, option in zip(letters, order.options)}})
    return asked


def multiple_choice_table(model: Any, questions: QuestionSet, tokenizer: Any, k: int = 4, seed: int = 0,
                          settings: Sequence[str] = MC_SETTINGS) -> pd.DataFrame:
    """One row per question of ``settings`` and option order (:func:`multiple_choice_prompts`): the option
    under each letter (option_A, ...), the letters' probabilities (p_A, ...), the right letter, p_correct,
    the chosen (most likely) letter and whether it is right."""
    asked = multiple_choice_prompts(questions, tokenizer, k, seed, settings)
    letters, k = asked.letters, len(asked.letters)
    probabilities = letter_probabilities(model, asked.prompts, letter_tokens(tokenizer, letters), stems=asked.stems)
    table = pd.DataFrame(asked.records)
    for column, letter in enumerate(letters):
        table[f"p_{letter}"] = probabilities[:, column].numpy()
    correct = torch.tensor(table.pop("_correct").to_numpy(dtype="int64"))
    table["p_correct"] = probabilities[torch.arange(len(table)), correct].numpy()
    chosen = probabilities.argmax(-1)
    table["chosen_letter"] = [letters[c] for c in chosen.tolist()]
    table["correct"] = (chosen == correct).numpy()
    table["n_options"] = k
    return table


def shared_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens the prompts share at their start (a question's stem, the same in each of its orders), at most
    one short of the shortest prompt: what :func:`probes.multiple_choice.letter_probabilities` runs once."""
    shared = 0
    while shared < min(map(len, prompts)) - 1 and len({prompt[shared] for prompt in prompts}) == 1:
        shared += 1
    return shared


TIE_RTOL, TIE_ATOL = 1e-5, 1e-6
"""Options whose scores s lie within TIE_ATOL + TIE_RTOL·|max s| nats of the largest tie (:func:`tied_best`)."""


def tied_best(score: np.ndarray) -> np.ndarray:
    """Indices of the options tied for the largest score s: within ``TIE_ATOL + TIE_RTOL·|max s|`` (1e-6 nats +
    1e-5 relative) of it. Each s is a mean of K log-probabilities of letters a float32 forward pass scored, summed
    in float64 in a different order per option, so scores equal in exact arithmetic (a model with pure letter
    bias gives every option the same s) differ in their last bits: ~1e-16 relative from the summation order, a
    few float32 ulps (1.2e-7 relative each) where equal inputs took different float32 paths. 1e-5 relative is
    ~80 float32 ulps, and far below any preference a choice could rest on (1e-5 nats: a probability ratio of
    1.00001)."""
    best = float(score.max())
    return np.flatnonzero(best - score <= TIE_ATOL + TIE_RTOL * abs(best))


def debiased_choices(table: pd.DataFrame) -> pd.DataFrame:
    """One row per question: the debiased score of the module docstring from its K orders, with
    ``p_debiased`` = q_right, ``correct_debiased`` (1, 0 or 1/n for a tie of n options including the
    right one; options tie within a float32 rounding tolerance, :func:`tied_best`), the right option's s
    minus the best other's (``score_gap``). A question whose orders do not put every option under every
    letter once is refused (the letter prior would not cancel)."""
    k = int(table.n_options.iloc[0])
    letters = LETTERS[:k]
    rows = []
    for number, part in table.groupby("question", sort=False):
        options = part[[f"option_{letter}" for letter in letters]].to_numpy()
        names = sorted(set(options[0]))
        latin = len(part) == k == len(names) and all(set(row) == set(names) for row in options) and all(
            set(options[:, j]) == set(names) for j in range(k))
        if not latin:
            raise ValueError(f"multiple-choice question {number}: its {len(part)} orders do not put each of the "
                             f"{k} options once under every letter; the letter prior would not cancel")
        logp = np.log(part[[f"p_{letter}" for letter in letters]].to_numpy(dtype=float))
        score = np.array([logp[options == name].mean() for name in names])
        right = names.index(part.answer.iloc[0])
        best = tied_best(score)
        q = np.exp(score - score.max())
        others = np.delete(score, right)
        rows.append({"question": number, **part.iloc[0][["key", "fact", "group", "setting", "direction",
                                                         "split", "answer"]].to_dict(),
                     "p_debiased": float(q[right] / q.sum()),
                     "correct_debiased": 1 / len(best) if right in best else 0.0,
                     "score_gap": float(score[right] - others.max())})
    return pd.DataFrame(rows)


def multiple_choice_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per group and setting: questions n and facts; raw p(right letter) and accuracy of the argmax, the debiased
    q_right and accuracy (:func:`debiased_choices`), each question's mean over its K orders first. The means and
    the 95% intervals of p and q (cut to [0, 1]) are over facts, each fact's questions averaged first
    (:func:`probes.stats.mean_ci95`: a fact's paraphrases are not independent samples), as the
    fine-tuning summary's margins are. Also K with chance 1 / K, and the letter prior (each letter's mean
    probability over every prompt: 1 / K each for a model without letter bias)."""
    k = int(table.n_options.iloc[0])
    out: dict[str, Any] = {"options": k, "chance": 1 / k, "groups": {},
                           "letter_prior": {letter: float(table[f"p_{letter}"].mean()) for letter in LETTERS[:k]}}
    per_question = table.groupby(["group", "setting", "question"], sort=False).agg(
        p_correct=("p_correct", "mean"), correct=("correct", "mean"), fact=("fact", "first"))
    debiased = debiased_choices(table).set_index(["group", "setting", "question"])
    for (group, setting), part in per_question.groupby(level=[0, 1], sort=False):
        fair = debiased.loc[part.index]
        raw = mean_ci95(part.p_correct, part.fact, PROBABILITY)
        unbiased = mean_ci95(fair.p_debiased, part.fact, PROBABILITY)
        out["groups"].setdefault(group, {})[setting] = {
            "n": int(len(part)), "facts": raw["n"], "p_correct": raw["mean"], "p_correct_ci95": raw["ci95"],
            "accuracy": mean_ci95(part.correct, part.fact)["mean"],
            "p_debiased": unbiased["mean"], "p_debiased_ci95": unbiased["ci95"],
            "accuracy_debiased": mean_ci95(fair.correct_debiased, part.fact)["mean"]}
    return out


def format_multiple_choice(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Lines per group and setting: raw p(right letter) / accuracy and debiased q / accuracy per stage
    (``{"before": summary, ...}``), and each stage's letter prior."""
    first = next(iter(stages.values()))
    lines = [f"multiple choice ({first['options']} options, every order; chance {first['chance']:.2f}): "
             "raw p(right letter) / accuracy, debiased (option scores averaged over the orders) p / accuracy"]
    for group, settings in first["groups"].items():
        for setting in settings:
            shown = "; ".join(
                f"{stage} raw {row['p_correct']:.3f} / {row['accuracy']:.3f}, debiased "
                f"{row.get('p_debiased', float('nan')):.3f} / {row.get('accuracy_debiased', float('nan')):.3f}"
                for stage, summary in stages.items() for row in (summary["groups"][group][setting],))
            lines.append(f"  {group} {setting.replace('_', ' ')} (n {settings[setting]['n']}): {shown}")
    for stage, summary in stages.items():
        if "letter_prior" in summary:
            prior = ", ".join(f"{letter} {p:.2f}" for letter, p in summary["letter_prior"].items())
            lines.append(f"  letter prior ({stage}; mean p per letter, 1/K without bias): {prior}")
    return lines
