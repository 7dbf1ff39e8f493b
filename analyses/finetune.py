"""`revlens finetune-facts`: the reversal curse on a pretrained LLM, fine-tuned on facts it never saw.

The default experiment (Berglund et al. 2023, experiment 1, at laptop scale): SmolLM2-135M
is fine-tuned, every parameter, on sentences "<name> ... <description>" about fictitious
people of the p2d group (:func:`facts.language.people_world`), in the first N paraphrases of
:data:`facts.language.TRAIN_TEMPLATES`, with the loss on the description tokens only. Or on the
user's facts (``facts=``): a folder in Berglund et al.'s experiment-1 layout, a CSV or a fact
JSONL (:func:`read_questions`). Every question (:mod:`facts.questions`) is asked before and
after fine-tuning, per group and setting, Berglund's protocol:

* ``forward_heldout_paraphrase``: the trained direction in paraphrases never trained on (knowing
  the fact, not the sentence); ``forward_trained_paraphrase``: the first trained paraphrase;
* ``reverse``: the held-out direction, against K random answers of the group's same kind plus,
  in a Berglund folder, the randomized file's name for the same prompt;
* ``in_context_reverse``: the trained sentence stated in the prompt, then the reverse question.

Per question: greedy exact match; top-1 (the answer's log p beats every control's); the margin
m_i = log p(answer_i | prompt) − mean_j log p(control_ij | prompt), ≈ 0 when the curse holds,
reported as mean ± t₀.₉₇₅(n − 1)·s/√n over the n facts (Student's t, :mod:`probes.stats`; each fact's
questions averaged first: its paraphrases are not independent samples); and the paired gain m_i(after) − m_i(before), the effect
of training itself: ≈ 0 for the reverse, large for the forward. Exact match, top-1, log p and rank are
averaged the same way (:func:`setting_summary`): per fact first, then over the facts.

How it runs: the transformers model is trained (:class:`models.hf_training.CausalLM`: the loss's
logits only, tied embeddings kept tied) and converted to a HookedTransformer by the loader's own
converter (:func:`models.pretrained.to_hooked`) before and after training, for the questions and the
circuits. ``lora_rank`` trains LoRA adapters instead, merged into the weights before the conversion.

Mitigations (``mitigation=``): the in-context setting above is in-context restatement;
``"bidirectional"`` also trains a second group of people both ways and asks whether that
teaches the model to reverse the p2d group's one-way facts; ``"reverse-training"`` adds each
training sentence with its words reversed, entities kept whole; ``"identity-bridge"`` (Ma et al.
2026) adds, per tested person and training paraphrase, an identity sentence "The name of X is X"
(:data:`facts.language.IDENTITY_TEMPLATES`), loss on the repeated name (:data:`MITIGATIONS`).
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analyses.reproduce import _write_history, _write_json, write_csv
from facts.io import save_jsonl
from facts.language import (IDENTITY_TEMPLATES, TEST_TEMPLATES, TRAIN_TEMPLATES, TemplateTokenizer, bos_prefix,
                            encode_pair, people_world, render, render_statement)
from facts.berglund import GROUPS, experiment_files
from facts.questions import SETTINGS, QuestionSet, load_templates, questions_from_facts, spaced_like
from facts.schema import FactError, FactSet
from facts.tokens import Example, TokenizedFacts, collate
from probes.stats import mean_ci95

STAGES = ("before", "after")
HISTORY_SETS = {"forward": "forward_trained_paraphrase", "reverse": "reverse"}
"""history.jsonl's evaluation sets: each the answers of the questions of one setting (:data:`facts.questions.SETTINGS`)."""
TESTED = "p2d"
"""The group whose facts every setting asks: trained name → description, reverse held out."""
MITIGATIONS = {
    "none": (TESTED,),
    "bidirectional": (TESTED, "both"),
    "reverse-training": (TESTED,),
    "identity-bridge": (TESTED,),
}
"""Fact groups trained per mitigation. ``bidirectional`` adds as many people again whose facts are
trained both ways (name → description and description → name, Berglund et al.'s "both" group):
does seeing other facts in both directions teach the model to reverse the one-way ones? The
tested facts are always the p2d group's. ``reverse-training`` adds every training sentence once more
with its words reversed and the name and description kept whole (:func:`reverse_words`), so the
name follows the description in some text the model reads, though never in a question.
``identity-bridge`` adds "The name of X is X" for every tested person X (:func:`identity_examples`): the
name, the answer of the held-out question, is trained as an answer given itself, nothing of the
reverse fact is."""
DEFAULT_PARAPHRASES = 2
"""Training paraphrases per fact of the built-in world unless ``templates`` says otherwise."""


CONTROLS = 15
"""``finetune-facts``' controls a question, unless asked otherwise: all 15 other people of the default world."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The default experiment; ``trainable_blocks=None`` fine-tunes every parameter, an int
    ``n`` trains only the last ``n`` transformer blocks (the memory-light option: embeddings,
    earlier blocks and their gradients and optimizer state are left out). ``lora_rank=r`` trains
    LoRA adapters of rank r instead (:func:`models.hf_training.add_lora`: scale ``lora_alpha``/r,
    alpha 2r by default; ``lora_targets`` names the block linear layers, None for all), merged into
    the weights before the model is evaluated and probed.

    ``facts``: None for the built-in people world (``people`` per group), else a Berglund
    experiment-1 folder, a fact CSV or a fact JSONL (:func:`read_questions`), with sentence
    templates from ``templates_file`` if given. ``templates``: training paraphrases per fact (the
    first N; default 2 for fact sets, every prompt of a Berglund folder).

    The defaults are the experiment's core, sized to run in about 1.5 minutes on 2 CPU cores (SmolLM2-135M): 16
    people, each question's answer against all 15 others, trained 8 epochs, asked before and after. The
    analyses around it are asked for: causal tracing and the weight change (``tracing_facts``), multiple choice
    (``multiple_choice``). The default until 2026-12-05, 30 people with every analysis, is ``people=30,
    n_controls=16, tracing_facts=2, multiple_choice=4`` (6.5 to 8 minutes)."""

    model: str = "smollm2-135m"
    people: int = 16
    templates: int | None = None
    facts: str | None = None
    templates_file: str | None = None
    epochs: int = 8
    lr: float = 3e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    trainable_blocks: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] | None = None
    n_controls: int | None = None
    """Random other answers each answer is ranked against; None: :data:`CONTROLS`, or every other person of a smaller
    built-in world (``people`` − 1)."""
    mitigation: str = "none"
    seed: int = 0
    device: str | None = None
    tracing_facts: int = 0
    """Facts of the tested group traced before and after (:mod:`analyses.finetune_tracing`); 0: none."""
    groups: tuple[str, ...] | None = None
    """Berglund et al.'s groups of the built-in people world to train (``p2d``, ``d2p``, ``both``: all
    three is their experiment-1 grid); None: the mitigation's (:data:`MITIGATIONS`, p2d alone by default)."""
    multiple_choice: int = 0
    """Options K of the questions asked as multiple choice before and after (:mod:`analyses.multiple_choice`;
    fewer where a question has fewer wrong answers, :func:`analyses.multiple_choice.options_count`); 0: none."""

    def __post_init__(self) -> None:
        if self.n_controls is None:
            default = CONTROLS if self.facts is not None else max(1, min(CONTROLS, self.people - 1))
            object.__setattr__(self, "n_controls", default)
        if self.mitigation not in MITIGATIONS:
            raise ValueError(f"mitigation must be one of {sorted(MITIGATIONS)}, got {self.mitigation!r}")
        if self.templates is not None and self.templates < 1:
            raise ValueError(f"templates (training paraphrases) must be ≥ 1, got {self.templates}")
        if self.multiple_choice != 0 and not 2 <= self.multiple_choice <= 4:
            raise ValueError(f"multiple_choice (options) must be 0 (none) or 2…4, got {self.multiple_choice}")
        if self.tracing_facts < 0:
            raise ValueError(f"tracing_facts must be ≥ 0, got {self.tracing_facts}")
        for name in ("people", "epochs", "batch_size", "n_controls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number ≥ 0, got {self.weight_decay}")
        if self.lora_targets is not None and not self.lora_targets:
            raise ValueError("lora_targets is empty: name at least one layer, or leave it None for all of them")
        if self.lora_rank is not None:
            from models.hf_training import check_lora_options

            check_lora_options(self.lora_rank, self.lora_alpha)
            if self.trainable_blocks is not None:
                raise ValueError("LoRA (lora_rank, --lora-rank) and trainable_blocks (--trainable-blocks): choose one")
        elif self.lora_alpha is not None or self.lora_targets is not None:
            given = " and ".join(name for name in ("lora_alpha", "lora_targets") if getattr(self, name) is not None)
            raise ValueError(f"{given} (--{given.replace('_', '-').replace(' and ', ' and --')}) set without lora_rank "
                             f"(--lora-rank): they configure LoRA, which only a rank turns on")
        if self.mitigation == "identity-bridge" and (self.templates or DEFAULT_PARAPHRASES) > len(IDENTITY_TEMPLATES):
            raise ValueError(f"mitigation identity-bridge states each name in as many identity sentences as training "
                             f"paraphrases, and has {len(IDENTITY_TEMPLATES)}; {self.templates} training paraphrases "
                             f"asked (--train-paraphrases {len(IDENTITY_TEMPLATES)} or fewer)")
        if self.facts is not None and self.mitigation != "none":
            raise ValueError(f"mitigation {self.mitigation!r} builds on the built-in people world; not with facts")
        if self.groups is not None:
            if self.facts is not None or self.mitigation != "none":
                raise ValueError("groups choose the built-in world's fact groups: not with facts or a mitigation "
                                 "(a Berglund folder brings its own groups)")
            if not self.groups or len(set(self.groups)) != len(self.groups) or not set(self.groups) <= set(GROUPS):
                raise ValueError(f"groups must be distinct names from {list(GROUPS)}, got {list(self.groups)}")
        if self.facts is None:
            if self.templates is not None and self.templates_file is None and self.templates > len(TRAIN_TEMPLATES["p2d"]):
                raise ValueError(f"templates must be 1…{len(TRAIN_TEMPLATES['p2d'])}, got {self.templates}")
            if self.people < 2:
                raise ValueError(f"people must be ≥ 2 (each answer is compared with another person's), got "
                                 f"{self.people}")
            if self.n_controls >= self.people:
                raise ValueError(f"n_controls ({self.n_controls}, --controls) must be below the number of people "
                                 f"({self.people}, --people): each question's controls are other people's answers")


def training_sentences(facts: FactSet, tokenizer, templates: int, pad_id: int, reverse_training: bool = False
                       ) -> TokenizedFacts:
    """Every trained statement of ``facts`` in each of the first ``templates`` paraphrases; with
    ``reverse_training``, each also once more in entity-preserving reversal (:func:`reversed_example`) of what is
    trained, its prompt and answer (not the words a template puts after the answer), as :func:`training_examples`
    reverses it."""
    examples = []
    for number in range(templates):
        asked = TemplateTokenizer(tokenizer, TRAIN_TEMPLATES, template=number)
        for index, direction, split in facts.statements():
            if split == "train":
                examples.append(asked.example(facts, index, direction))
                if reverse_training:
                    rendered = render_statement(facts, index, direction, TRAIN_TEMPLATES, number)
                    examples.append(reversed_example(facts, index, direction, rendered.prompt + rendered.answer,
                                                     number, tokenizer))
    return collate(examples, pad_id)


def reverse_words(text: str, entities: Sequence[str]) -> str:
    """Entity-preserving reversal (Golovneva et al. 2024, "Reverse training"): the words of ``text``
    in reverse order, each entity kept whole and in its own order, punctuation dropped.
    "Ann Lee, known for being the author of 'X'." → "the author of 'X' being for known Ann Lee"."""
    pattern = re.compile("(" + "|".join(re.escape(e) for e in sorted(entities, key=len, reverse=True)) + ")")
    units: list[str] = []
    for part in pattern.split(text):
        units.extend([part] if part in entities else re.findall(r"[\w'’-]+", part))
    return " ".join(reversed(units))


def asked(tokenizer, prompt: str, answer: str, label: str, fact: int, direction: str, split: str) -> Example:
    """``prompt`` → ``answer`` as the model reads it: the one prompt rule (BOS exactly when the
    tokenizer adds it, :func:`facts.language.bos_prefix`), then :func:`facts.language.encode_pair`."""
    prompt_ids, answer_ids = encode_pair(tokenizer, prompt, answer, label)
    return Example(bos_prefix(tokenizer) + prompt_ids, answer_ids, fact, direction, split)


def reversed_example(facts: FactSet, index: int, direction: str, text: str, template: int, tokenizer) -> Example:
    """The trained sentence ``text`` (statement ``index``, ``direction``, in paraphrase ``template``: the one
    trained, from the built-in templates or a templates file) reversed by :func:`reverse_words`, its loss on
    every token but the first word's (the language-model loss of reverse training): the name now follows the
    description."""
    fact = facts[index]
    first, rest = reverse_words(text, (fact.subject, fact.object)).split(" ", 1)
    label = f"fact {index} ({fact.subject!r}, reversed paraphrase {template})"
    return asked(tokenizer, first, " " + rest, label, index, direction, "train")


def identity_examples(facts: FactSet, paraphrases: int, tokenizer) -> list[Example]:
    """The Identity Bridge for the people world: for every trained name → description fact, its
    name in the first ``paraphrases`` of :data:`facts.language.IDENTITY_TEMPLATES`, given and asked
    ("The name of X is" → " X", as training pairs end at their answer): the loss on the name, the answer the held-out reverse asks for."""
    if paraphrases > len(IDENTITY_TEMPLATES):
        raise ValueError(f"identity-bridge has {len(IDENTITY_TEMPLATES)} identity templates, {paraphrases} asked")
    examples = []
    for index, direction, split in facts.statements():
        if split != "train" or direction != "forward":
            continue
        name = facts[index].subject
        for template in IDENTITY_TEMPLATES[:paraphrases]:
            rendered = render(template, name, name)
            examples.append(asked(tokenizer, rendered.prompt, rendered.answer,
                                  f"fact {index} ({name!r}, identity {template!r})", index, "forward", "train"))
    return examples


def read_questions(config: FinetuneConfig) -> QuestionSet:
    """What to train on and ask, checked whole before any model loads: the built-in people world,
    or ``config.facts`` read by :func:`facts.sources.read_fact_source` (a folder in Berglund et al.'s
    experiment-1 layout, a CSV of facts or a fact JSONL; templates from ``config.templates_file`` or
    :mod:`facts.language`'s), the reader ``revlens probe --facts`` uses too."""
    from facts.sources import read_fact_source

    paraphrases = config.templates or DEFAULT_PARAPHRASES
    if config.facts is not None:
        source = read_fact_source(config.facts, config.templates_file, config.templates)
        return source.questions(TRAIN_TEMPLATES, TEST_TEMPLATES, paraphrases)
    train_templates, test_templates = ((TRAIN_TEMPLATES, TEST_TEMPLATES) if config.templates_file is None
                                       else load_templates(config.templates_file))
    facts = people_world(n_per_group=config.people, seed=config.seed,
                         groups=config.groups or MITIGATIONS[config.mitigation])
    return questions_from_facts(facts, train_templates, test_templates, paraphrases)


def draw_controls(questions: QuestionSet, n_controls: int, seed: int) -> list[list[str]]:
    """Per question: the controls its data brings (Berglund's randomized name), then ``n_controls``
    random other answers of its pool (none an answer the set gives its prompt too:
    :meth:`facts.questions.QuestionSet.right_answers`), seeded per question, each spaced as the question's own answer
    (:func:`facts.questions.spaced_like`: a randomized file's "Bo Ray" after a prompt whose answer is " Ann Lee"
    is read " Bo Ray"). An ``in_context_reverse`` question takes the controls of its statement's first ``reverse``
    question (the one it restates after the trained sentence: same key), not a draw of its own, so the two margins
    differ by the prompt alone, as the token world's fact in the prompt is scored against its plain question's
    controls (same answer, pool and given entity; its prompt is no other question's, so those controls are wrong
    answers of it too). A pool with fewer wrong answers than
    ``n_controls`` is refused (a margin over fewer controls than asked would be another number)."""
    others_of = []  # distinct answers, compared without a template's leading space
    for question, wrong in zip(questions.questions, questions.wrong_answers()):
        taken = {control.strip() for control in question.extra_controls}
        others_of.append([a for a in wrong if a not in taken])
    fewest = min(range(len(others_of)), key=lambda number: len(others_of[number]), default=None)
    if fewest is not None and len(others_of[fewest]) < n_controls:
        question, most = questions.questions[fewest], len(others_of[fewest])
        raise FactError(f"{question.source}: {n_controls} controls asked, but the {question.pool!r} answers hold "
                        f"only {most} other(s); use --controls {most} or fewer" if most else
                        f"{question.source}: its {question.pool!r} answers hold no other answer to compare it with")
    plain: dict[int, int] = {}  # key → its first reverse question's number
    for number, question in enumerate(questions.questions):
        if question.setting == "reverse":
            plain.setdefault(question.key, number)
    drawn: list[list[str] | None] = [None] * len(others_of)
    for number, (question, others) in enumerate(zip(questions.questions, others_of)):
        if question.setting != "in_context_reverse" or question.key not in plain:
            sampled = random.Random(f"{seed}:{number}").sample(others, n_controls)
            drawn[number] = [spaced_like(a, question.completion) for a in (*question.extra_controls, *sampled)]
    for number, question in enumerate(questions.questions):
        if drawn[number] is None:  # an in-context reverse question: its plain reverse question's controls
            drawn[number] = [spaced_like(a, question.completion) for a in drawn[plain[question.key]]]
    return drawn  # type: ignore[return-value]


def question_rows(questions: QuestionSet, tokenizer, controls: Sequence[Sequence[str]]) -> list[list[Example]]:
    """Per question, its answer and then each of its ``controls`` after its prompt, tokenised
    (:func:`facts.language.encode_pair`: a prompt whose last token would merge with an answer's is refused, naming
    the question)."""
    return [[asked(tokenizer, question.prompt, answer, question.source, question.fact, question.direction,
                   question.split) for answer in (question.completion, *drawn)]
            for question, drawn in zip(questions.questions, controls)]


def padding_id(tokenizer) -> int:
    """The token id that right-pads the training and evaluation batches: the tokenizer's pad token, else its end of
    text, else 0 (a tokenizer may have neither). Which one changes no number: a row is ``prompt ++ answer ++ padding``,
    a causal model's logits at position p read the tokens ≤ p alone, and the loss and the evaluation read only the
    positions that predict an answer token (:func:`models.scoring.answer_inputs`), every one before the row's
    padding. So any id of the vocabulary pads (0 is in every vocabulary)."""
    for special in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if special is not None:
            return int(special)
    return 0


def check_tokenised(config: FinetuneConfig, questions: QuestionSet, controls: Sequence[Sequence[str]]) -> None:
    """Tokenise every training sentence and every question with its controls in the model's tokenizer, as the run
    will (:func:`training_examples`, :func:`question_rows`): a sentence the tokenizer cannot split at its answer is
    refused here, before the run folder is touched, not after an earlier run's files were removed. The tokenizer
    stays kept for the run, whose :func:`read_inputs_and_model` takes it over."""
    from models.pretrained import load_tokenizer, one_parse

    with one_parse(config.model):
        tokenizer = load_tokenizer(config.model)
    training_examples(questions, config, tokenizer, padding_id(tokenizer))
    question_rows(questions, tokenizer, controls)


def evaluate_questions(model, questions: QuestionSet, tokenizer, controls: Sequence[Sequence[str]],
                       ) -> pd.DataFrame:
    """One row per question: log p(answer | prompt) summed over its tokens, greedy exact match,
    the mean log p of its controls, margin = logprob − control mean, rank among them (1 is best,
    :func:`rank_among`: a control that ties the answer ranks above it) and top1 = rank 1 (the answer
    beats every control, as docs/SCIENCE.md defines top-1). Each prompt and each answer prefix is computed once
    (:func:`probes.shared_prompt.candidate_logprobs_cached`: by trie where the model has no hook and its
    architecture is checked, else from the prompts' cached keys and values)."""
    from probes.shared_prompt import candidate_logprobs_cached

    rows = question_rows(questions, tokenizer, controls)
    records: list[dict[str, Any]] = [{}] * len(rows)
    for width in sorted({len(row) for row in rows}):  # rows with a randomized name have one control more
        chosen = [i for i, row in enumerate(rows) if len(row) == width]
        scores = candidate_logprobs_cached(model, [rows[i] for i in chosen])
        for position, i in enumerate(chosen):
            logprob, others = scores.logprob[position, 0].item(), scores.logprob[position, 1:]
            rank = rank_among(logprob, others)
            question = questions.questions[i]
            records[i] = {
                "key": question.key, "fact": question.fact, "group": question.group, "setting": question.setting,
                "direction": question.direction, "split": question.split, "trained": question.split == "train",
                "answer": question.completion.strip(), "logprob": logprob, "prob": math.exp(logprob),
                "correct": bool(scores.correct[position, 0]), "control_logprob": others.mean().item(),
                "randomized_logprob": others[0].item() if question.extra_controls else math.nan,
                "margin": logprob - others.mean().item(), "top1": rank == 1, "rank": rank,
                "n_candidates": width, "chance_logprob": math.nan,
                "source": question.source,
            }
    return pd.DataFrame(records)


def rank_among(logprob: float, others: Any) -> int:
    """The answer's rank among itself and its controls (1 is best): 1 + the controls whose log p is at least the
    answer's ``logprob``. A tie loses, as top-1 ("the answer beats every control") counts it, so top-1 is rank 1."""
    return int((others >= logprob).sum()) + 1


def write_tables(table: pd.DataFrame, out: Path, prefix: str = "") -> None:
    """``questions.csv``: every question; ``logits.csv``: one row per statement in the format
    ``revlens probe`` writes (the trained paraphrase, and the first reverse question), so
    ``revlens compare`` and ``reproduce mitigations`` read both alike; ``in_context.csv``: the
    in-context reverse rows."""
    write_csv(table, out / f"{prefix}questions.csv")
    plain = table[table.setting.isin(("forward_trained_paraphrase", "reverse"))]
    plain = plain.drop_duplicates(["key", "setting"]).sort_values(["key", "setting"], kind="stable")
    columns = [c for c in table.columns if c not in ("setting", "key", "source")]
    write_csv(plain[columns], out / f"{prefix}logits.csv")
    write_csv(table[table.setting == "in_context_reverse"][columns], out / f"{prefix}in_context.csv")


def setting_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Exact match and top-1 among the controls (top-1's chance: 1 / candidates), margin (with its interval over
    facts, :func:`mean_ci95`), log p and rank of one setting, every one a mean over the facts of each fact's mean
    over its questions, the margin's unit: a fact asked in more paraphrases weighs no more than one asked in fewer
    (where every fact is asked equally often, as in the built-in world, this is the mean over the questions)."""
    per_fact = table.assign(chance=1 / table.n_candidates).groupby("fact", sort=False)[
        ["correct", "top1", "chance", "logprob", "rank"]].mean()
    return {"exact_match": float(per_fact.correct.mean()), "top1": float(per_fact.top1.mean()),
            "chance_top1": float(per_fact.chance.mean()),
            "margin": mean_ci95(table.margin, table.fact), "logprob": float(per_fact.logprob.mean()),
            "mean_rank": float(per_fact["rank"].mean())}


def above_zero(ci95: Sequence[float]) -> bool | None:
    """Whether a 95% interval lies above 0 (its low end > 0); None when the interval is undefined (NaN, as for
    fewer than two facts), which gives no verdict either way."""
    low = ci95[0]
    return None if low is None or math.isnan(low) else bool(low > 0)


def reverse_not_learnt(reverse_gain_ci95: Sequence[float], forward_gain: float) -> bool | None:
    """The curse, read from the reverse questions' margin gain [low, high] beside the trained direction's mean gain:
    False where the reverse gained (low > 0); True where it did not (low ≤ 0) and its interval also lies below the
    forward's gain (high < forward_gain: it did not learn as the trained direction did); None (unknown) where the
    interval is undefined, or reaches both 0 and the forward's gain: too wide to tell a curse from a run without
    the power to see one (a gain of −0.3 [−11.7, 11.0] beside a forward gain of 8 is no evidence either way)."""
    learnt = above_zero(reverse_gain_ci95)
    if learnt is None or learnt:
        return None if learnt is None else False
    return True if reverse_gain_ci95[1] < forward_gain else None


def summarize(tables: dict[str, pd.DataFrame], config: FinetuneConfig, seconds: dict[str, float],
              n_sentences: int, steps: int, source: str) -> dict[str, Any]:
    """Per group and setting (:data:`facts.questions.SETTINGS`, those asked), before and after
    fine-tuning, :func:`setting_summary`, and the paired margin gain after − before (the same
    questions in the same order) with its interval over facts; and the findings, read on the tested group
    (p2d when present). The gain takes out each question's margin before training, so "the
    reverse was not learnt" (:func:`reverse_not_learnt`) reads: the gain's interval does not lie above 0 and lies
    below the trained direction's gain. A finding read from an interval is None (unknown) where the interval is
    undefined (:func:`above_zero`) or, for the reverse, too wide to tell."""
    before, after = tables["before"], tables["after"]
    out: dict[str, Any] = {"experiment": "finetune-facts", "config": asdict(config), "source": source,
                           "train_sentences": n_sentences, "steps": steps, "chance_exact_match": 0.0,
                           "chance_top1": float((1 / after.n_candidates).mean()),  # every question, as each setting pools its own
                           "seconds": seconds, "groups": {}}
    if not before[["key", "setting", "answer"]].equals(after[["key", "setting", "answer"]]):
        raise RuntimeError("the tables before and after fine-tuning list different questions")
    for group in dict.fromkeys(after.group):
        out["groups"][group] = {}
        for setting in SETTINGS:
            chosen = (after.group == group) & (after.setting == setting)
            if chosen.any():
                out["groups"][group][setting] = {
                    "before": setting_summary(before[chosen]), "after": setting_summary(after[chosen]),
                    "margin_gain": mean_ci95(after.margin[chosen] - before.margin[chosen], after.fact[chosen])}
    tested = out["groups"].get(TESTED) or next(iter(out["groups"].values()))
    findings = {"forward_learnt": tested["forward_trained_paraphrase"]["after"]["exact_match"] >= 0.9}
    if "forward_heldout_paraphrase" in tested:
        findings["forward_generalises_to_heldout_paraphrases"] = above_zero(
            tested["forward_heldout_paraphrase"]["margin_gain"]["ci95"])
    if "reverse" in tested:
        findings["reverse_not_learnt"] = reverse_not_learnt(tested["reverse"]["margin_gain"]["ci95"],
                                                            tested["forward_trained_paraphrase"]["margin_gain"]["mean"])
    if "in_context_reverse" in tested:
        in_context = tested["in_context_reverse"]["after"]["margin"]["ci95"]
        findings["in_context_reverse_above_chance"] = above_zero(in_context)
    out["tested_group"] = TESTED if TESTED in out["groups"] else next(iter(out["groups"]))
    out["findings"] = findings
    if config.facts is None or source.startswith(BERGLUND_SOURCE):  # a fact file (JSONL, CSV) has none of their files
        out["berglund_files"] = berglund_files(before, after, source)
    return out


BERGLUND_SOURCE = "berglund:"
"""How a Berglund folder's questions name their source: ``berglund:`` and the folder."""
BERGLUND_SETTINGS = {"test": "forward_heldout_paraphrase", "reverse": "reverse", "randomized": "reverse"}
"""Which questions stand for each of Berglund et al.'s experiment-1 test files (seven: three
``*_prompts_test``, two ``*_reverse_prompts_test`` and their two ``_randomized`` twins)."""


def group_ways(group: str, source: str) -> tuple[str, str | None] | None:
    """Berglund et al.'s ``group`` in words: (the trained way, the held-out reverse or None), in
    names and descriptions for the people world and a Berglund folder, else in the fact's subject
    and object (a CSV's or JSONL's ``group``); None for a group outside their three."""
    first, second = (("name", "description") if source == "people" or source.startswith("berglund")
                     else ("subject", "object"))
    forward, backward = f"{first} → {second}", f"{second} → {first}"
    return {"p2d": (forward, backward), "d2p": (backward, forward), "both": ("both ways", None)}.get(group)


def berglund_file_asks(group: str, kind: str, source: str) -> str:
    """What a test file of ``group`` (``kind``: test, reverse, randomized) asks, in words."""
    ways = group_ways(group, source)
    if ways is None:
        return kind
    trained, reverse = ways
    return {"test": f"{trained}, trained, in held-out words", "reverse": f"{reverse}, held out",
            "randomized": f"{reverse}, held out: the right {str(reverse).split(' → ')[-1]} against the "
                          f"randomized one"}[kind]


def berglund_files(before: pd.DataFrame, after: pd.DataFrame, source: str) -> dict[str, dict[str, Any]]:
    """Per test file of Berglund et al.'s experiment 1 whose group was trained: what it asks in
    words (:func:`berglund_file_asks`), the questions that stand for it (:data:`BERGLUND_SETTINGS`),
    exact match, top-1 and margin before and after. Of a Berglund folder (``source`` "berglund:<folder>"), the
    files the folder has; of the built-in world, which stands for their three groups, each of a trained group's.
    (:func:`summarize` asks it of no fact file, a JSONL or CSV: it has none of their files.)
    A ``_randomized`` file holds the reverse questions with a wrong name in place of the right one;
    its entry compares the two: the share of reverse questions whose right name is likelier than the
    randomized one (``beats_randomized``) and the mean log p difference, on the questions that bring a
    randomized name (a Berglund folder's; the built-in world brings none: n 0), each a mean over facts of each
    fact's questions first, as :func:`setting_summary`'s are."""
    folder = Path(source.removeprefix(BERGLUND_SOURCE)) if source.startswith(BERGLUND_SOURCE) else None
    out = {}
    for group in dict.fromkeys(after.group):
        for kind, name in experiment_files(group).items():
            if kind not in BERGLUND_SETTINGS or (folder is not None and not (folder / name).is_file()):
                continue
            chosen = (after.group == group) & (after.setting == BERGLUND_SETTINGS[kind])
            asks = berglund_file_asks(group, kind, source)
            if kind != "randomized":
                out[name] = {"group": group, "asks": asks, "setting": BERGLUND_SETTINGS[kind],
                             "n": int(chosen.sum()),
                             **({stage: setting_summary(table[chosen]) for stage, table in
                                 (("before", before), ("after", after))} if chosen.any() else {})}
                continue
            chosen &= after.randomized_logprob.notna()
            entry: dict[str, Any] = {"group": group, "asks": asks, "setting": "reverse", "n": int(chosen.sum())}
            for stage, table in (("before", before), ("after", after)):
                if chosen.any():
                    difference = table.logprob[chosen] - table.randomized_logprob[chosen]
                    entry[stage] = {"beats_randomized": mean_ci95((difference > 0).astype(float),
                                                                  table.fact[chosen])["mean"],
                                    "logprob_minus_randomized": mean_ci95(difference, table.fact[chosen])}
            out[name] = entry
    return out


def training_examples(questions: QuestionSet, config: FinetuneConfig, tokenizer, pad_id: int) -> TokenizedFacts:
    """Every training prompt/completion as a loss-on-the-completion example; with
    ``reverse-training`` (built-in world), each followed by its sentence reversed (:func:`reversed_example`);
    with ``identity-bridge``, the identity sentences of :func:`identity_examples` after them."""
    statement = {q.key: (q.fact, q.direction) for q in questions.questions if q.setting == "forward_trained_paraphrase"}
    examples = []
    for pair in questions.train:
        fact, direction = statement[pair.key]
        examples.append(asked(tokenizer, pair.prompt, pair.completion, f"training pair {pair.prompt!r}", fact, direction,
                              "train"))
        if config.mitigation == "reverse-training":
            examples.append(reversed_example(questions.facts, fact, direction, pair.prompt + pair.completion,
                                             pair.paraphrase, tokenizer))
    if config.mitigation == "identity-bridge":
        examples += identity_examples(questions.facts, max(p.paraphrase for p in questions.train) + 1, tokenizer)
    return collate(examples, pad_id)


def check_model_options(config: FinetuneConfig) -> None:
    """Refuse ``trainable_blocks`` above the model's layer count and ``lora_targets`` that are no linear
    layer of its blocks, from the configuration the model declares (:func:`models.pretrained.declared_config`:
    a folder's ``config.json`` or a GGUF's metadata; the model built on the meta device, no weight read),
    before any folder is touched. Where no configuration can be read, or the architecture cannot be built
    without its weights, the load checks both."""
    if config.trainable_blocks is None and config.lora_targets is None:
        return
    import torch
    from transformers import AutoModelForCausalLM

    from models.hf_training import decoder_blocks, lora_target_names
    from models.pretrained import declared_config

    declared = declared_config(config.model)
    if declared is None:
        return  # the load checks both
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(declared)
        n_blocks, valid = len(decoder_blocks(model)), lora_target_names(model)
    except Exception:  # an architecture this cannot build without its weights: the load checks both
        return
    if config.trainable_blocks is not None and config.trainable_blocks > n_blocks:
        raise ValueError(f"--trainable-blocks {config.trainable_blocks}: {config.model} has {n_blocks} blocks; "
                         f"use 1…{n_blocks}")
    unknown = [name for name in config.lora_targets or () if name not in valid]
    if unknown:
        raise ValueError(f"--lora-targets {' '.join(unknown)}: not linear layers of {config.model}'s blocks; "
                         f"valid: {', '.join(valid)}")


def read_inputs_and_model(config: FinetuneConfig) -> tuple[QuestionSet, list[list[str]], Any, TokenizedFacts,
                                                            dict[str, TokenizedFacts], Any]:
    """The questions and their controls, the tokenizer, the training sentences and evaluation sets,
    then the transformers model: every input is read and tokenised before the model loads, and a
    GGUF model's file is parsed once for both tokenizer and model (:func:`models.pretrained.one_parse`). The
    tokenizer is read once and kept by none: one :func:`check_tokenised` kept is handed over, not copied, and the
    model is read without one of its own (``load_hf``'s ``tokenizer``)."""
    from models.pretrained import load_hf, load_tokenizer, one_parse

    questions = read_questions(config)
    controls = draw_controls(questions, config.n_controls, config.seed)
    with one_parse(config.model):
        tokenizer = load_tokenizer(config.model, keep=False)
        sentences = training_examples(questions, config, tokenizer, padding_id(tokenizer))
        eval_sets = evaluation_sets(questions, tokenizer)
        hf_model, _ = load_hf(config.model, device=config.device, keep=False, tokenizer=tokenizer)
    return questions, controls, tokenizer, sentences, eval_sets, hf_model


def finetune_facts(out: str | Path, config: FinetuneConfig = FinetuneConfig(), progress: bool = True
                   ) -> dict[str, Any]:
    """Run the experiment; write summary.json, questions.csv, logits.csv, in_context.csv and
    circuits.csv (after fine-tuning; ``before_*.csv`` before it; a Berglund folder's facts are its p2d and d2p
    people whose reverse it asks), multiple_choice.csv (unless ``config.multiple_choice`` is 0), history.jsonl,
    facts.jsonl and finetune.png into ``out``; return the summary.
    The input is read and checked whole before the model loads. Float32 products run on oneDNN's kernels where
    MKL's are the slower float32 ones (:func:`models.cpu_matmul.float32_matmul`; ``float32_matmul`` in the summary).
    ``seconds`` in the summary: disjoint stages ``load`` (reading and converting the model), ``train``, ``convert``,
    ``evaluate`` (questions, multiple choice and circuits, before and after), ``trace`` (causal tracing before and
    after, with the weight change and their tables and figures), and ``total``, from the start to summary.json."""
    from models.cpu_matmul import float32_matmul
    from models.scoring import model_device

    began = time.perf_counter()
    inputs = read_inputs_and_model(config)
    with float32_matmul(model_device(inputs[-1])) as kernels:  # training, questions and tracing alike
        return _finetune_loaded(out, config, progress, began, inputs, kernels)


def _finetune_loaded(out: str | Path, config: FinetuneConfig, progress: bool, began: float, inputs: tuple,
                   kernels: str) -> dict[str, Any]:
    """:func:`finetune_facts` once its inputs and model are read (``inputs``: :func:`read_inputs_and_model`'s)."""
    from analyses.compare import y_circuit_metrics
    from analyses.figures import finetune_bars
    from analyses.probe import circuit_summary
    from models.hf_training import CausalLM, add_lora, merge_lora
    from models.pretrained import freeze_except_last_blocks, to_hooked
    from models.training import TrainConfig, train
    from probes.circuits import circuit_table
    from probes.shared_prompt import scores_by_tree
    from probes.views import save_png

    questions, controls, tokenizer, sentences, eval_sets, hf_model = inputs
    model = to_hooked(hf_model, tokenizer, config.model, device=config.device)
    # the questions are asked of the transformers model itself where it scores by trie (the floor's speed; its
    # HookedTransformer conversion agrees within 1e-4 on SmolLM2's prompts, Gemma 3's within float32 rounding in
    # another order, up to 6.4e-3 at positions 256-511: models.pretrained), of the conversion where it cannot or
    # LoRA wraps it
    by_tree = config.lora_rank is None and scores_by_tree(hf_model)
    lora_targets = None
    if config.lora_rank is not None:  # the targets are checked against the model before anything is evaluated
        hf_model, lora_targets = add_lora(hf_model, config.lora_rank, config.lora_alpha, config.lora_targets,
                                           seed=config.seed)
        lora_parameters = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    elif config.trainable_blocks is not None:
        freeze_except_last_blocks(hf_model, config.trainable_blocks)
    loaded = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = questions.facts
    entity_ids = TemplateTokenizer(tokenizer, TRAIN_TEMPLATES).entity_ids
    tables = {"before": evaluate_questions(hf_model if by_tree else model, questions, tokenizer, controls)}
    choices = {"before": _ask_multiple_choice(model, questions, tokenizer, config)}
    circuits = {"before": circuit_table(model, facts, entity_ids, seed=config.seed)} if facts is not None else {}
    tracing_began = time.perf_counter()
    tracing = _start_tracing(model, questions, tokenizer, config)
    traced = time.perf_counter() - tracing_began  # the tracing before fine-tuning
    del model  # the "before" copy; training runs on the transformers model, converted again after
    per_epoch = math.ceil(len(sentences) / config.batch_size)
    trained = time.perf_counter()
    steps = per_epoch * config.epochs
    result = train(
        CausalLM(hf_model), sentences,
        TrainConfig(steps=steps, lr=config.lr, weight_decay=config.weight_decay,
                    batch_size=config.batch_size, eval_every=per_epoch, seed=config.seed, progress=progress),
        callbacks=[_evaluation_between(eval_sets, steps)],
    )
    if config.lora_rank is not None:
        hf_model = merge_lora(hf_model)
    hf_model.eval()
    evaluated = time.perf_counter()
    if by_tree:
        tables["after"] = evaluate_questions(hf_model, questions, tokenizer, controls)
    asked = time.perf_counter()
    model = to_hooked(hf_model, tokenizer, config.model, device=config.device, take=True)
    del hf_model  # handed over: its weights are the converted model's
    converted = time.perf_counter()
    if not by_tree:
        tables["after"] = evaluate_questions(model, questions, tokenizer, controls)
    choices["after"] = _ask_multiple_choice(model, questions, tokenizer, config)
    if facts is not None:
        circuits["after"] = circuit_table(model, facts, entity_ids, seed=config.seed)
    # disjoint stages; "trace" (causal tracing before and after, with its tables and figures) and "total" are
    # completed once the tracing after fine-tuning has run
    seconds = {"load": loaded - began, "train": result.seconds, "convert": converted - asked,
               "evaluate": (time.perf_counter() - converted) + (asked - evaluated) + (trained - loaded) - traced,
               "trace": traced}
    summary = summarize(tables, config, seconds, len(sentences), result.steps, questions.source)
    summary["float32_matmul"] = kernels
    summary["questions_asked_of"] = ("transformers model, by trie" if by_tree else
                                     "TransformerLens conversion" + (", by trie" if scores_by_tree(model) else ""))
    if lora_targets is not None:
        summary["lora"] = {"rank": config.lora_rank, "alpha": config.lora_alpha or 2 * config.lora_rank,
                           "targets": lora_targets, "trainable_parameters": lora_parameters}
    for stage, prefix in (("after", ""), ("before", "before_")):
        write_tables(tables[stage], out, prefix)
    if isinstance(choices["after"], str):
        summary["multiple_choice_skipped"] = choices["after"]
    elif config.multiple_choice:
        from analyses.multiple_choice import multiple_choice_summary

        summary["multiple_choice"] = {stage: multiple_choice_summary(choices[stage]) for stage in STAGES}
        for stage, prefix in (("after", ""), ("before", "before_")):
            write_csv(choices[stage], out / f"{prefix}multiple_choice.csv")
    if facts is not None:
        summary["circuits"] = circuit_summary(circuits["after"])
        summary["effective_weights"] = {stage: y_circuit_metrics(circuits[stage]) for stage in STAGES}
        for stage, prefix in (("after", ""), ("before", "before_")):
            write_csv(circuits[stage], out / f"{prefix}circuits.csv")
        save_jsonl(facts, out / "facts.jsonl")
    if tracing is not None:
        tracing_began = time.perf_counter()
        summary["tracing"] = tracing.finish(model, out)
        seconds["trace"] += time.perf_counter() - tracing_began
    for record, stage in ((result.history[0], "before"), (result.history[-1], "after")):
        record["eval"] = history_evaluation(tables[stage])
    _write_history(out / "history.jsonl", result.history)
    save_png(finetune_bars(summary), out / "finetune.png")
    seconds["total"] = time.perf_counter() - began
    _write_json(out / "summary.json", summary)
    return summary


def evaluation_sets(questions: QuestionSet, tokenizer) -> dict[str, TokenizedFacts]:
    """The history's evaluation sets (:data:`HISTORY_SETS`, those with questions): each question's prompt and
    answer tokenised as its table row's first candidate (:func:`question_rows`)."""
    return {name: collate([asked(tokenizer, q.prompt, q.completion, q.source, q.fact, q.direction, q.split)
                           for q in questions.questions if q.setting == setting], padding_id(tokenizer))
            for name, setting in HISTORY_SETS.items() if any(q.setting == setting for q in questions.questions)}


def _evaluation_between(eval_sets: dict[str, TokenizedFacts], steps: int):
    """A training callback: each record's ``eval`` (:func:`models.training.evaluate` of ``eval_sets``) but the
    first's and the last's (step 0 and ``steps``), which :func:`history_evaluation` reads from the question tables
    asked before and after training: the same prompts and answers, so they are not scored twice."""
    from models.training import evaluate

    def evaluation(step: int, model) -> dict[str, Any]:
        return {"eval": {} if step in (0, steps) else evaluate(model, eval_sets)}

    return evaluation


def history_evaluation(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """A history record's ``eval`` read from a question table (:func:`evaluate_questions`), as
    :func:`models.training.evaluate` computes it from :data:`HISTORY_SETS`' answers: per set, the mean answer
    log p, the mean probability exp(log p) and the share answered greedily right (exact match)."""
    evaluation = {}
    for name, setting in HISTORY_SETS.items():
        rows = table[table.setting == setting]
        if len(rows):
            evaluation[name] = {"logprob": float(rows.logprob.mean()), "prob": float(rows.logprob.map(math.exp).mean()),
                                "accuracy": float(rows.correct.mean())}
    return evaluation


def _ask_multiple_choice(model, questions: QuestionSet, tokenizer, config: FinetuneConfig) -> pd.DataFrame | str | None:
    """The forward (held-out paraphrase) and reverse questions as multiple choice, ``config.multiple_choice``
    options (:func:`analyses.multiple_choice.multiple_choice_table`); None when it is 0, and why not (a str)
    when the questions offer no multiple choice (no such setting, a pool of one answer)."""
    if not config.multiple_choice:
        return None
    from analyses.multiple_choice import multiple_choice_table, options_count

    try:
        options_count(questions, config.multiple_choice)
    except ValueError as error:
        return f"not asked: {error}"
    return multiple_choice_table(model, questions, tokenizer, config.multiple_choice, config.seed)


def _start_tracing(model, questions: QuestionSet, tokenizer, config: FinetuneConfig):
    """Causal tracing and the weight-change read (:class:`analyses.finetune_tracing.FinetuneTracing`), when
    the questions are about a fact set and ``config.tracing_facts`` > 0 (traced in the first training paraphrase:
    a Berglund folder's own prompt, or the templates file's when one is given, whose first test template for a
    relation it has no training sentence for); else None. ``model`` (the "before"
    conversion, whose weights are its own: training changes the transformers model) is handed over, not copied."""
    if questions.facts is None or not config.tracing_facts:
        return None
    from analyses.finetune_tracing import FinetuneTracing

    if config.templates_file is None:
        trained = questions.sentence_templates or TRAIN_TEMPLATES
    else:  # a relation the file only asks (a held-out reverse, with test templates alone) is traced as asked
        train, test = load_templates(config.templates_file)
        trained = {**test, **train}
    return FinetuneTracing(model, questions.facts, tokenizer, config.tracing_facts, seed=config.seed,
                           handed_over=True, templates=trained)


def _berglund_file_text(name: str, entry: dict[str, Any]) -> str:
    named = f"  {name} ({entry['asks']})" if "asks" in entry else f"  {name}"
    if "after" not in entry:
        return f"{named}: no questions" + (" with a randomized answer (a Berglund folder's `_randomized` file "
                                           "brings them)" if name.endswith("_randomized.jsonl") else "")
    after, before = entry["after"], entry["before"]
    if "top1" in after:
        low, high = after["margin"]["ci95"]
        return (f"{named}: top-1 {after['top1']:.2f} ({before['top1']:.2f}, chance {after['chance_top1']:.2f}), "
                f"exact match {after['exact_match']:.2f} ({before['exact_match']:.2f}), margin "
                f"{after['margin']['mean']:.2f} [{low:.2f}, {high:.2f}] ({before['margin']['mean']:.2f}), "
                f"n {entry['n']}")
    return (f"{named}: right answer likelier than the randomized one {after['beats_randomized']:.2f} "
            f"({before['beats_randomized']:.2f}), n {entry['n']}")


def _groups_legend(groups: Sequence[str], source: str) -> str | None:
    """One line naming each of Berglund et al.'s groups in the table by what it trained and held out."""
    said = []
    for group in groups:
        ways = group_ways(group, source)
        if ways is not None:
            trained, reverse = ways
            said.append(f"{group} trained {trained}, " + (f"reverse {reverse} held out" if reverse
                                                            else "nothing held out"))
    return ("groups: " + "; ".join(said) + " (forward: the trained way)") if said else None


def _verdict_word(value: bool | None) -> str:
    """A finding as printed: yes, no, or unknown where its interval cannot tell (None)."""
    return "unknown (its 95% interval is undefined or too wide to tell)" if value is None else "yes" if value else "no"


def format_summary(summary: dict[str, Any]) -> str:
    """A one-screen table: per group and setting, exact match, top-1 and margin before and after
    fine-tuning, and the paired margin gain with its 95% interval."""
    config = summary["config"]
    source = summary.get("source", "people")
    lines = [
        f"{config['model']} fine-tuned on {summary['train_sentences']} sentences ({source}), "
        f"{summary['steps']} steps, {summary['seconds']['total']:.0f} s"
        + (f" (float32 products: {summary['float32_matmul']})" if "float32_matmul" in summary else "")
        + (f"; mitigation: {config['mitigation']}" if config.get("mitigation", "none") != "none" else ""),
        f"margin = log p(answer) − mean log p(its controls: {config['n_controls']} random answers of the same kind"
        f"{', plus the randomized name where given' if source.startswith('berglund') else ''}); "
        f"top-1: the answer beats every control (chance: 1 / candidates, per row)",
        f"{'':34}{'facts/qs':>9}{'exact match':>14}{'top-1':>14}{'':>7}{'margin':>14}{'gain after − before':>30}",
        f"{'':34}{'':>9}{'before':>7}{'after':>7}{'before':>7}{'after':>7}{'chance':>7}{'before':>7}{'after':>7}"
        f"{'mean':>9}{'95% CI':>21}",
    ]
    legend = _groups_legend(list(summary["groups"]), source)
    if legend:
        lines.insert(2, legend)
    for group, settings in summary["groups"].items():
        for setting, row in settings.items():
            before, after, gain = row["before"], row["after"], row["margin_gain"]
            low, high = gain["ci95"]
            lines.append(
                f"{group + ' ' + setting.replace('_', ' '):34}{str(gain['n']) + '/' + str(gain['questions']):>9}"
                f"{before['exact_match']:7.3f}"
                f"{after['exact_match']:7.3f}{before['top1']:7.3f}{after['top1']:7.3f}{after['chance_top1']:7.2f}"
                f"{before['margin']['mean']:7.2f}"
                f"{after['margin']['mean']:7.2f}{gain['mean']:9.2f}   [{low:7.2f}, {high:7.2f}]")
    if "effective_weights" in summary:
        before, after = (summary["effective_weights"][stage] for stage in STAGES)
        lines.append(
            f"OV circuits Y (mean z over {after['n_y_circuits']} heads, entry vs controls' entries): trained "
            f"{before['z_trained']:.3g} → {after['z_trained']:.3g}; held-out reverse "  # a pretrained LM's are ~1e-3
            f"{before['z_heldout']:.3g} → {after['z_heldout']:.3g}; most asymmetric circuit after: "
            f"{after['most_asymmetric_circuit']} ({after['max_asymmetry']:.2f})")
    if "multiple_choice" in summary:
        from analyses.multiple_choice import format_multiple_choice

        lines += format_multiple_choice(summary["multiple_choice"])
    if "tracing" in summary:
        from analyses.finetune_tracing import format_finetune_tracing

        lines.append(format_finetune_tracing(summary["tracing"]))
    files = summary.get("berglund_files", {})
    if files:
        lines.append("Berglund et al.'s experiment-1 test files (after; before in brackets):")
        lines += [_berglund_file_text(name, entry) for name, entry in files.items()]
    findings = summary["findings"]
    said = {"forward_learnt": "forward learnt (≥ 90% exact match on the trained paraphrase)",
            "forward_generalises_to_heldout_paraphrases": "forward generalises to held-out paraphrases "
                                                          "(margin gain above 0)",
            "reverse_not_learnt": "reverse not learnt (margin gain not above 0 and below the trained "
                                  "direction's: the curse)",
            "in_context_reverse_above_chance": "in-context reverse above chance"}
    lines.append(f"{summary['tested_group']} group: " + "; ".join(
        f"{said[name]}: {_verdict_word(value)}" for name, value in findings.items()))
    return "\n".join(lines)


__all__: Sequence[str] = ("FinetuneConfig", "finetune_facts", "format_summary", "read_questions",
                          "training_examples", "training_sentences")
