"""Scoring in several processes (:mod:`probes.processes`) gives the numbers of one process, on tiny random
Gemma 3 and Llama models, each other process loading its own copy from the folder; a process that dies fails
the run with a message, never a hang; and the count chosen follows the device, the work and the memory."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from test_shared_prompt import candidate_rows

from models.pretrained import load
from probes import processes
from probes.processes import MIN_STATEMENTS, UNIT, Processes, candidate_logprobs_in_processes, processes_for, units
from probes.shared_prompt import candidate_logprobs_cached

pytestmark = pytest.mark.xdist_group("tiny-architectures")  # the tiny models are built once, in one worker


@pytest.mark.parametrize("architecture, backend", [("gemma3", "bridge"), ("llama", "hooked")])
def test_two_processes_give_the_numbers_of_one(architecture, backend, tiny_models):
    tiny = tiny_models[architecture]
    model = tiny.backends[backend]
    rows = candidate_rows(tiny.tokenizer, n_controls=5)
    assert len(units(rows)) >= 2  # the other process is sent the first unit, this one scores the rest
    one = candidate_logprobs_cached(model, rows)
    two = candidate_logprobs_in_processes(model, rows, Processes(2, functools.partial(load, tiny.folder,
                                                                                        backend=backend, device="cpu")))
    assert (two.logprob - one.logprob).abs().max().item() < 1e-5
    assert torch.equal(two.correct, one.correct)


def test_a_process_that_dies_fails_the_run_with_a_message(tiny_models):
    tiny = tiny_models["llama"]
    rows = candidate_rows(tiny.tokenizer, n_controls=5)
    with pytest.raises(RuntimeError, match="a scoring process ended before its statements were scored"):
        candidate_logprobs_in_processes(tiny.backends["hooked"], rows, Processes(2, functools.partial(os._exit, 3)))


def test_units_hold_one_prompt_length_longest_first_and_every_statement_once(tiny_models):
    rows = candidate_rows(tiny_models["llama"].tokenizer) * 7  # 35 statements, prompts of two lengths
    found = units(rows)
    assert sorted(i for unit in found for i in unit) == list(range(len(rows)))
    lengths = [{len(rows[i][0].prompt) for i in unit} for unit in found]
    assert all(len(one) == 1 for one in lengths) and all(len(unit) <= UNIT for unit in found)
    assert [next(iter(one)) for one in lengths] == sorted((next(iter(one)) for one in lengths), reverse=True)


def test_the_count_follows_the_device_the_work_and_the_memory(tiny_models, monkeypatch):
    model = tiny_models["llama"].backends["hooked"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert processes_for(model, 10 * MIN_STATEMENTS, 4) == 4
    assert processes_for(model, MIN_STATEMENTS - 1, 4) == 1  # the others would still be starting
    assert processes_for(model, 10 * MIN_STATEMENTS, 1) == 1
    monkeypatch.setattr(processes, "available_memory", lambda: 5 * weights)  # room for two more copies, twice over
    assert processes_for(model, 10 * MIN_STATEMENTS, 4) == 3
