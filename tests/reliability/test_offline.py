"""Offline guarantee: the main commands work with the network made impossible, and try no connection.

One fresh process (:func:`cli_processes.offline_session`) with HF_HUB_OFFLINE=1,
TRANSFORMERS_OFFLINE=1 and every internet socket refused in-process runs `revlens reproduce
reversal`, `revlens probe` on its checkpoint, `revlens check-asymmetry --limit 5` on SmolLM2
(a TransformerBridge), and loads SmolLM2 as a HookedTransformer and as a plain transformers model.
A second process without
the HF_*_OFFLINE variables (:func:`cli_processes.second_session`) runs the token-world commands:
the code itself, not only the variables, keeps them off the network.
"""

from __future__ import annotations

import json

import pytest

from cli_processes import offline_session, second_session

from models.backend import HookedTransformer

pytestmark = pytest.mark.xdist_group("cli-processes")  # one offline_session per run, shared with the other file


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    return offline_session(tmp_path_factory.getbasetemp())


def test_main_commands_work_with_the_network_blocked_and_attempt_no_connection(offline):
    assert offline.attempts == [], "\n".join(offline.attempts)
    out = offline.out
    reversal = json.loads((out / "reversal/summary.json").read_text())
    assert reversal["n_train"] == 68 and reversal["steps"] == 6
    assert json.loads((out / "probe/summary.json").read_text())["step"] == 6
    asymmetry = json.loads((out / "asymmetry/summary.json").read_text())
    assert "SmolLM2" in json.dumps(asymmetry) and (out / "asymmetry/pairs.csv").read_text().count("\n") > 5
    hooked = "HookedTransformer" if HookedTransformer else "TransformerBridge"  # TL 4: "hooked" loads a bridge
    assert asymmetry["backend"] == "bridge" and f"loaded {hooked} LlamaForCausalLM" in offline.stdout


def test_token_world_commands_need_no_offline_variables(tmp_path_factory):
    second = second_session(tmp_path_factory.getbasetemp())
    assert second.attempts == [], "\n".join(second.attempts)
    assert (second.out / "probe/logits.csv").is_file()
