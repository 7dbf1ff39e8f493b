"""A→B versus B→A: the answer's log-probability, rank and greedy accuracy per fact direction.

For a statement with prompt c and true answer a, among candidate answers C (by default :func:`kind_candidates`,
the answers of a's own kind in the fact set: the objects for a forward question, the subjects for a reverse one,
the set a statement's answer is drawn from and so the paper's "chance" set; a caller may give every entity, or
any set that holds the answer):

* ``logprob``  = log p(a | c), summed over a's tokens;
* ``rank``     = 1 + #{a' ∈ C, a' ≠ a : log p(a' | c) ≥ log p(a | c)}  (1 is best; a tie ranks above the answer,
  so rank 1 means it outscores every other);
* ``correct``  = greedy decoding from c writes a's tokens first (the argmax at each of a's positions, teacher
  forced); what it would write after a is not asked ("Tom Hanks" counts if greedy goes on with " Jr.");
* ``chance_logprob`` = −log |C| (``rank_against="candidates"``), what a model that knows nothing about the pair
  would give when C is the answer's kind (:func:`kind_candidates`): such a model still knows which kind the
  relation token asks for (in the reversal world "←" only ever answers a subject), so it spreads its
  probability over that kind, not over every entity (−log 200, not −log 400, for the reversal world's
  200 pairs); over every entity it is the chance of a model that does not know the kind either.
  NaN when answers are ranked among a few random controls only, where −log(1 + K) is no
  chance level for a log p (the margin's 0 is). A k-token answer's chance is the same −log |C| for
  its summed log p: a model uniform over C gives each answer 1/|C|, whatever its length;
* ``margin`` = log p(a | c) − mean_j log p(a'_j | c) over K random control answers a'_j of
  the same kind (other objects for a forward question, other subjects for a reverse one):
  ≈ 0 means the model prefers the true answer no more than a random name.

Single-token answers take one forward pass over the prompts; multi-token answers score each
candidate by teacher forcing, in batches.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from facts.language import answers_of_kind, controls_of, wrong_answers
from facts.schema import DIRECTIONS, Direction, FactSet
from facts.tokens import Example, FactTokenizer, collate, right_padded
from models.backend import is_tl_model
from models.scoring import (Model, check_causal, check_token_ids, in_eval_mode, model_device, score_answers,
                            vocab_size)
from probes.shared_prompt import candidate_logprobs_cached

Statement = tuple[int, Direction]


def _prompt_batch(examples: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor]:
    return right_padded([e.prompt for e in examples], pad_id), torch.tensor([len(e.prompt) for e in examples])


@in_eval_mode
@torch.no_grad()
def _next_token_gather(
    model: Model, examples: Sequence[Example], ids: Tensor, pad_id: int, batch_size: int = 512
) -> Float[Tensor, "n k"]:
    """``log p(ids[i, j] | prompt_i)`` from one forward pass over the prompts (answers not fed); the model must be
    causal (its last prompt position reads no padding after it) and every id inside its vocabulary, as every other
    scorer checks (:func:`models.scoring.check_causal`, :func:`models.scoring.check_token_ids`)."""
    check_causal(model)
    if isinstance(model, torch.nn.Module) and len(examples):
        check_token_ids(model, collate(list(examples), pad_id), "candidate_logprobs")  # the prompts
        size = getattr(getattr(model, "cfg", None), "d_vocab_out", None)
        size = size if isinstance(size, int) and size > 0 else vocab_size(model)
        bad = (ids < 0) | (ids >= size) if size else torch.zeros_like(ids, dtype=torch.bool)
        if bad.any():
            row = int(bad.any(1).nonzero()[0])
            raise ValueError(f"candidate_logprobs: fact {examples[row].fact} ({examples[row].direction}): candidate "
                             f"token id {int(ids[row][bad[row]][0])} is outside the model's output vocabulary of {size}")
    device = model_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    out = []
    for start in range(0, len(examples), batch_size):
        tokens, lengths = _prompt_batch(examples[start : start + batch_size], pad_id)
        logits = model(tokens.to(device))
        last = logits[torch.arange(len(tokens)), (lengths - 1).to(device)].float().log_softmax(-1)
        out.append(last.gather(-1, ids[start : start + batch_size].to(device)).cpu())
    return torch.cat(out)


TOKENIZER_PROBE = "The capital of France is Paris, and Tom Cruise's mother is Mary Lee Pfeiffer."
"""The text :func:`check_fact_tokenizer` encodes with both tokenizers."""


def check_fact_tokenizer(model: Model, tokenizer: object) -> None:
    """Refuse, with ``ValueError``, a text fact tokenizer (a :class:`facts.language.TemplateTokenizer`, or an object
    holding one, such as its bound ``entity_ids``) whose tokenizer is not the model's own: another model's ids may
    all lie inside this model's vocabulary, and every number read with them would then be about other tokens. Two
    tokenizers are the same here when they have as many tokens and encode :data:`TOKENIZER_PROBE` alike (a copy of
    the model's, or one that adds BOS where the model's does not, passes). A model without a tokenizer, or a fact
    tokenizer without a text one (a token world's), is not checked."""
    text = getattr(getattr(tokenizer, "__self__", tokenizer), "tokenizer", None)
    own = getattr(model, "tokenizer", None)
    if text is None or own is None or text is own:
        return
    sizes = [len(t) if hasattr(t, "__len__") else None for t in (text, own)]
    ids = [list(t.encode(TOKENIZER_PROBE, add_special_tokens=False)) for t in (text, own)]
    if sizes[0] != sizes[1] or ids[0] != ids[1]:
        name = getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)
        raise ValueError(
            f"{name}: the facts are tokenized with another tokenizer than the model's own ({sizes[0]} tokens against "
            f"{sizes[1]}; {TOKENIZER_PROBE!r} as {ids[0][:8]}... against {ids[1][:8]}...), so the ids asked would "
            f"be other tokens to this model; build the fact tokenizer from model.tokenizer")


@in_eval_mode
@torch.no_grad()
def answers_logprobs(
    model: Model,
    facts: FactSet,
    tokenizer: FactTokenizer,
    statements: Sequence[Statement],
    answers: Sequence[Sequence[str]],
    pad_id: int = 0,
    batch_size: int = 2048,
) -> Float[Tensor, "n_statements k"]:
    """``log p(answers[i][j] | prompt of statements[i])``; every row has the same length k.

    When every answer is one token whatever the prompt, one forward pass over the prompts
    serves all of them; when a row's answers share its prompt, a TransformerLens model runs the
    prompt once and each answer prefix once where it can (:mod:`probes.shared_prompt` chooses: by trie, from the
    prompt's keys and values, or teacher forcing); otherwise each (prompt, answer) pair is scored by teacher forcing.
    """
    if len(answers) != len(statements):
        raise ValueError(f"answers_logprobs: {len(statements)} statements but {len(answers)} rows of answers; give one "
                         "row of answers per statement")
    check_fact_tokenizer(model, tokenizer)
    width = {len(row) for row in answers}
    if len(width) != 1:
        raise ValueError(f"every statement needs the same number of answers to score, got {sorted(width)}")
    examples = [[tokenizer.example(facts, i, d, a) for a in row] for (i, d), row in zip(statements, answers)]
    if all(len(e.answer) == 1 for row in examples for e in row):
        prompts = [row[0] for row in examples]
        if all(e.prompt == row[0].prompt for row in examples for e in row):
            ids = torch.tensor([[e.answer[0] for e in row] for row in examples])
            return _next_token_gather(model, prompts, ids, pad_id)
    if is_tl_model(model) and all(e.prompt == row[0].prompt for row in examples for e in row):
        return candidate_logprobs_cached(model, examples).logprob
    flat = [e for row in examples for e in row]
    scores = score_answers(model, collate(flat, pad_id), batch_size=batch_size)
    return scores.logprob.view(len(statements), width.pop())


def _shared_answer_ids(
    facts: FactSet, tokenizer: FactTokenizer, statements: Sequence[Statement], truths: Sequence[Example],
    candidates: Sequence[str],
) -> Tensor | None:
    """Candidate token ids when every candidate is one token, the same after every prompt, else None.

    Candidates are tokenized after the first prompt. Every statement's own answer is checked
    against those ids after its own prompt; unless the tokenizer reads answers alone
    (``answers_read_alone``: a token world's), so is every candidate after every prompt, as the
    pair-by-pair path would tokenize them (a text tokenizer can read a candidate differently after
    another template's last characters).
    """
    index, direction = statements[0]
    ids = [tokenizer.example(facts, index, direction, c).answer for c in candidates]
    if any(len(i) != 1 for i in ids):
        return None
    by_name = {c: i[0] for c, i in zip(candidates, ids)}
    alone = getattr(tokenizer, "answers_read_alone", False)
    for (index, direction), truth in zip(statements, truths):
        answer = facts[index].given_and_answer(direction)[2]
        if answer in by_name and truth.answer != (by_name[answer],):
            return None
        if not alone and any(tokenizer.example(facts, index, direction, c).answer != (by_name[c],) for c in candidates):
            return None
    return torch.tensor([by_name[c] for c in candidates])


def candidate_logprobs(
    model: Model,
    facts: FactSet,
    tokenizer: FactTokenizer,
    statements: Sequence[Statement],
    candidates: Sequence[str],
    pad_id: int = 0,
) -> Float[Tensor, "n_statements n_candidates"]:
    """``log p(candidate | prompt of statement)`` for every statement × candidate pair (an empty table for no
    statements or no candidates)."""
    if not statements or not candidates:
        return torch.zeros(len(statements), len(candidates))
    check_fact_tokenizer(model, tokenizer)
    truths = [tokenizer.example(facts, i, d) for i, d in statements]
    shared = _shared_answer_ids(facts, tokenizer, statements, truths, candidates)
    if shared is not None:
        return _next_token_gather(model, truths, shared.expand(len(truths), -1), pad_id)
    return answers_logprobs(model, facts, tokenizer, statements, [list(candidates)] * len(statements), pad_id)


def answer_controls(facts: FactSet, statements: Sequence[Statement], n_controls: int = 16, seed: int = 0
                    ) -> list[list[str]]:
    """The controls :func:`answer_table` draws for ``statements`` (:func:`facts.language.controls_of`): ``n_controls``
    each, or, for every statement, as many as the statement with the fewest wrong answers has
    (:func:`facts.language.wrong_answers`)."""
    k = min([n_controls] + [len(pool) for pool in wrong_answers(facts, statements)])
    return controls_of(facts, statements, k, seed)


Candidates = Sequence[str] | Mapping[Direction, Sequence[str]]


def kind_candidates(facts: FactSet) -> dict[Direction, list[str]]:
    """Per direction, the answers of its kind in ``facts`` (:func:`facts.language.answers_of_kind`): the objects for
    a forward question, the subjects for a reverse one, the candidates a statement's answer is drawn from.
    :func:`answer_table`'s default: each answer ranked among its own kind, where chance is that of a model that
    knows which kind is asked and nothing about the pair."""
    return {d: answers_of_kind(facts, d) for d in DIRECTIONS}


def _candidate_sets(facts: FactSet, candidates: Candidates | None) -> dict[Direction, list[str]]:
    """Per direction, the set a statement of that direction is ranked among (a name listed twice counts once):
    ``None``: the answer's kind in ``facts`` (:func:`kind_candidates`); a sequence: that one set for both
    directions; a mapping: its entry per direction."""
    if candidates is None:
        candidates = kind_candidates(facts)
    if isinstance(candidates, Mapping):
        return {d: list(dict.fromkeys(candidates.get(d, ()))) for d in DIRECTIONS}
    among = list(dict.fromkeys(candidates))
    return {d: among for d in DIRECTIONS}


def answer_table(
    model: Model,
    facts: FactSet,
    tokenizer: FactTokenizer,
    candidates: Candidates | None = None,
    n_controls: int = 16,
    rank_against: Literal["candidates", "controls"] = "candidates",
    seed: int = 0,
    pad_id: int = 0,
    controls: Sequence[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per directed statement in play: log-prob, rank, accuracy, margin over controls.

    ``rank_against="candidates"`` ranks the answer among ``candidates`` (default: :func:`kind_candidates`, the
    answer's own kind, where rank, n_candidates and chance are those of a model that knows which kind is asked and
    nothing about the pair; a mapping: a set per direction; a sequence: that set for every statement, e.g. every
    entity of both kinds), a set: a name listed twice counts once, and one that
    leaves out a statement's answer is refused; ``"controls"`` ranks it among its K controls only (1..K+1), the cheap
    choice for multi-token answers on a large model, where scoring every entity costs
    statements × entities teacher-forced passes.

    Columns: fact, direction, split, trained, group, given, answer, logprob, prob, rank,
    n_candidates (per row: the size of its statement's candidate set), chance_logprob (−log n_candidates; NaN with
    ``"controls"``), correct, control_logprob (mean over
    ``n_controls`` random answers of the same kind, :func:`facts.language.controls_of`; fewer, for every
    statement, when one has fewer wrong answers: :func:`facts.language.wrong_answers`; read from the candidates'
    log-probs where every control is among its statement's candidates, else scored apart), margin (logprob −
    control_logprob). ``controls``: each statement's controls, drawn elsewhere (as many for each), in place of
    those drawn here (a question asked of a sub-world, compared with the same statement's in the whole world).
    """
    if rank_against not in ("candidates", "controls"):
        raise ValueError(f"rank_against must be 'candidates' or 'controls', got {rank_against!r}")
    if n_controls < 0:
        raise ValueError(f"n_controls must be ≥ 0, got {n_controls}")
    check_fact_tokenizer(model, tokenizer)
    statements = [(i, d) for i, d, _ in facts.statements()]
    answers = [facts[i].given_and_answer(d)[2] for i, d in statements]
    if controls is not None and (len(controls) != len(statements) or len({len(c) for c in controls}) > 1):
        raise ValueError(f"controls: one list of as many controls for each of the {len(statements)} statements, "
                         f"got {len(controls)} lists of lengths {sorted({len(c) for c in controls})}")
    for row, ((index, direction), given) in enumerate(zip(statements, controls or [])):
        if answers[row] in given:  # it would tie the truth: a rank one too low and a margin pulled towards 0
            raise ValueError(f"controls: fact {index} ({direction})'s controls include its own answer "
                             f"{answers[row]!r}; a control is a wrong answer")
    if rank_against == "candidates":  # checked before any pass
        among = _candidate_sets(facts, candidates)
        columns = {d: {candidate: j for j, candidate in enumerate(among[d])} for d in DIRECTIONS}
        missing = next((row for row, (answer, (_, d)) in enumerate(zip(answers, statements))
                        if answer not in columns[d]), None)
        if missing is not None:
            index, direction = statements[missing]
            raise ValueError(f"fact {index} ({direction}): its answer {answers[missing]!r} is not among the "
                             f"{len(among[direction])} candidates; rank_against='candidates' ranks each answer among "
                             "candidates that include it")
    truths = collate([tokenizer.example(facts, i, d) for i, d in statements], pad_id)
    scores = score_answers(model, truths)
    drawn = controls if controls is not None else answer_controls(facts, statements, n_controls, seed)
    n_controls = len(drawn[0]) if drawn else 0
    if n_controls == 0 and rank_against == "controls":
        raise ValueError("rank_against='controls' needs n_controls ≥ 1 and a wrong answer of its kind for every "
                         "statement")
    ranked: list[tuple[list[int], Direction, Tensor]] = []  # statements ranked among one set, and their matrix
    if rank_against == "candidates":
        groups: dict[tuple[str, ...], list[int]] = {}  # statements ranked among the same set: scored in one call
        for row, (_, direction) in enumerate(statements):
            groups.setdefault(tuple(among[direction]), []).append(row)
        for members in groups.values():
            direction = statements[members[0]][1]
            ranked.append((members, direction, candidate_logprobs(
                model, facts, tokenizer, [statements[r] for r in members], among[direction], pad_id)))
    control_scores = torch.full((len(statements), 0), float("nan"))
    if n_controls > 0 and ranked and all(c in columns[d] for given, (_, d) in zip(drawn, statements) for c in given):
        control_scores = torch.empty(len(statements), n_controls)  # each control is a candidate: its column
        for members, direction, matrix in ranked:
            control_scores[members] = matrix.gather(1, torch.tensor([[columns[direction][c] for c in drawn[r]]
                                                                     for r in members]))
    elif n_controls > 0:
        control_scores = answers_logprobs(model, facts, tokenizer, statements, drawn, pad_id)
    if rank_against == "controls":
        better = (control_scores >= scores.logprob[:, None]).sum(1)
        n_candidates = [n_controls + 1] * len(statements)
    else:
        better = torch.zeros(len(statements), dtype=torch.long)
        n_candidates = [0] * len(statements)
        for members, direction, matrix in ranked:
            is_truth = torch.zeros(len(members), len(among[direction]), dtype=torch.bool)
            is_truth[torch.arange(len(members)), [columns[direction][answers[r]] for r in members]] = True
            better[members] = ((matrix >= scores.logprob[members][:, None]) & ~is_truth).sum(1)
            for r in members:
                n_candidates[r] = len(among[direction])
    control_mean = control_scores.mean(1) if n_controls > 0 else torch.full((len(statements),), float("nan"))
    rows = []
    for row, (index, direction) in enumerate(statements):
        fact = facts[index]
        given, _, answer = fact.given_and_answer(direction)
        split = fact.split(direction)
        logprob = float(scores.logprob[row])
        rows.append({
            "fact": index, "direction": direction, "split": split, "trained": split == "train",
            "group": fact.group, "given": given, "answer": answer,
            "logprob": logprob, "prob": math.exp(logprob),
            "rank": int(better[row]) + 1, "n_candidates": n_candidates[row],
            "chance_logprob": -math.log(n_candidates[row]) if rank_against == "candidates" else math.nan,
            "correct": bool(scores.correct[row]),
            "control_logprob": float(control_mean[row]), "margin": logprob - float(control_mean[row]),
        })
    return pd.DataFrame(rows)
