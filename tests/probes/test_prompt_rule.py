"""One prompt rule for every command: BOS before a prompt exactly when the model's tokenizer adds it
itself, as the model's files declare (SmolLM2's GGUF: tokenizer.ggml.add_bos_token false; Gemma's:
true), and one set of templates per fact kind, so `probe` and `check-asymmetry` give one celebrity
fact one log-probability. On the real SmolLM2 (its tokenizer adds no BOS), the real Gemma 3 270M (its
tokenizer adds BOS) and a tiny random Gemma 3 read with a tokenizer told to add BOS; a tiny Llama whose
tokenizer starts every encoding with a token that is not its BOS gets that token in every prompt."""

from __future__ import annotations

import copy

import pytest
import torch

from analyses.asymmetry import DEFAULT_TEMPLATES, TEMPLATE_FAMILIES, asymmetry_table
from analyses.finetune import reversed_example, training_sentences
from analyses.probe import pretrained_probed
from facts.celebrity import load_celebrity_pairs
from facts.language import TRAIN_TEMPLATES, TemplateTokenizer, bos_prefix, people_world, render_statement
from facts.schema import Fact, FactSet
from models.pretrained import ModelSource, declared_bos, load, resolve
from probes.circuits import check_circuits_readable, circuit_table
from probes.logits import answer_table
from probes.shared_prompt import scores_by_tree

N_PAIRS = 8


@pytest.fixture(scope="module")
def celebrities():
    return load_celebrity_pairs()


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer):
    """SmolLM2's tokenizer cut to the tiny models' vocabulary, told to start every encoding with its BOS token, as
    Gemma's does."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_bos_token = True
    assert tokenizer.encode("a")[0] == tokenizer.bos_token_id
    return tokenizer


def logprobs_of_both_commands(model, tokenizer, celebrities):
    """Each statement's log p(answer | prompt) as `probe` computes it (its ProbedModel and answer_table)
    and as `check-asymmetry` does (asymmetry_table, prefix-cached scoring), on the first N_PAIRS pairs.
    One control each (the fewest both accept): only the answers' own log-probabilities are compared."""
    first = FactSet(celebrities.facts[:N_PAIRS], world="celebrity")
    probed = pretrained_probed(model, tokenizer, "celebrity", {})
    probe = answer_table(model, first, probed.statements, n_controls=1, rank_against="controls")
    asked = TemplateTokenizer(tokenizer, TEMPLATE_FAMILIES[DEFAULT_TEMPLATES])
    pairs = asymmetry_table(model, celebrities, asked, limit=N_PAIRS, n_controls=1).set_index("fact")
    column = {"forward": "child_to_parent_logprob", "reverse": "parent_to_child_logprob"}
    probe_lp = torch.tensor(probe.logprob.to_numpy(), dtype=torch.float64)
    check_lp = torch.tensor([pairs.loc[f, column[d]] for f, d in zip(probe.fact, probe.direction)], dtype=torch.float64)
    return probed, probe_lp, check_lp


def test_a_model_reached_through_a_symlink_is_one_model_under_one_path(tmp_path):
    """A packaged GGUF found through a linked folder (a virtual environment that is itself a symlink) is
    the file it links to, so the caches keyed on its path agree (the BOS its metadata declares was
    recorded under the file's own path and looked up under the link's: a KeyError)."""
    real = resolve("smollm2-135m").path
    (tmp_path / "linked").symlink_to(real.parent, target_is_directory=True)
    source = ModelSource(tmp_path / "linked" / real.name, "SmolLM2-135M-Instruct")
    assert source.path == real and source.is_gguf
    assert declared_bos(source).add is False


def test_smollm2_gets_no_bos_and_one_logprob_per_fact(smollm2_hooked, smollm2_tokenizer, celebrities):
    assert declared_bos(resolve("smollm2-135m")).add is False  # its GGUF's tokenizer.ggml.add_bos_token
    assert bos_prefix(smollm2_tokenizer) == () and not smollm2_hooked.cfg.default_prepend_bos
    probed, probe_lp, check_lp = logprobs_of_both_commands(smollm2_hooked, smollm2_tokenizer, celebrities)
    assert probed.statements.example(celebrities, 0, "forward").prompt[0] != smollm2_tokenizer.bos_token_id
    assert len(probe_lp) >= N_PAIRS + 1  # every forward question, and the reverse of the first children
    assert (probe_lp - check_lp).abs().max() < 1e-4


def test_gemma3_270m_gets_its_bos_and_one_logprob_per_fact(gemma3_hooked, celebrities):
    tokenizer = gemma3_hooked.tokenizer
    assert declared_bos(resolve("gemma3-270m")).add is True  # its GGUF's tokenizer.ggml.add_bos_token
    assert bos_prefix(tokenizer) == (tokenizer.bos_token_id,) and gemma3_hooked.cfg.default_prepend_bos
    probed, probe_lp, check_lp = logprobs_of_both_commands(gemma3_hooked, tokenizer, celebrities)
    prompt = probed.statements.example(celebrities, 0, "forward").prompt
    assert prompt[0] == tokenizer.bos_token_id and prompt[1] != tokenizer.bos_token_id
    assert (probe_lp - check_lp).abs().max() < 1e-4


def test_gemma3_270m_on_the_bridge_scores_and_reads_circuits_as_hooked(gemma3_hooked, gemma3_bridge, gemma3_hf,
                                                                     celebrities):
    """check-asymmetry's scoring on the bridge (by trie: one pass a statement) gives the hooked model's
    log-probs (under TransformerLens 4.x both are bridges, the "hooked" one in compatibility mode), and so do its OV
    and QK circuits: the bridge runs Gemma's Hugging Face norms, which store w and scale by 1 + w (measured on each
    norm's module: ``models.backend.norm_scale``), where TransformerLens's HookedTransformer stores 1 + w. Under
    TransformerLens 3.9 `probe --backend bridge` had been refused for its circuits (its norms do not say so).
    Both models' entries also equal the products computed by hand from the Hugging Face weights (so that under 4.x,
    where both are bridges, the entries are checked against something other than a bridge): an entity is the mean
    of its tokens' rows, x_s = √d · mean(E[s]) ⊙ (1 + w_ln1), OV = ((1 + w_post) ⊙ W_O^h W_V^g x_a) ·
    mean((1 + w_final) ⊙ E[b]) (the unembedding is the embedding), QK = ((1 + w_q) ⊙ W_Q^h x_a) · ((1 + w_k) ⊙
    W_K^g x_b), g the key/value head of query head h (1/σ left out, as documented)."""
    asked = TemplateTokenizer(gemma3_bridge.tokenizer, TEMPLATE_FAMILIES[DEFAULT_TEMPLATES])
    assert asked.prefix == (gemma3_bridge.tokenizer.bos_token_id,)
    assert scores_by_tree(gemma3_bridge) and gemma3_bridge.original_model.config.sliding_window == 512
    tables = [asymmetry_table(model, celebrities, asked, limit=2, n_controls=1).set_index("fact")
              for model in (gemma3_hooked, gemma3_bridge)]
    columns = ["child_to_parent_logprob", "parent_to_child_logprob"]
    hooked, bridge = (torch.tensor(t[columns].to_numpy(dtype=float)) for t in tables)
    assert hooked.isfinite().sum() >= 3 and (hooked - bridge).nan_to_num().abs().max() < 1e-4
    check_circuits_readable(gemma3_bridge)
    facts = FactSet(celebrities.facts[:6], world="celebrity")
    circuits = [circuit_table(model, facts, asked.entity_ids, layers=[0, 8, 17], n_controls=2).set_index(
        ["fact", "circuit", "layer", "head"])[["entry_ab", "entry_ba"]] for model in (gemma3_hooked, gemma3_bridge)]
    entries = [torch.tensor(table.to_numpy(dtype=float)) for table in circuits]
    assert circuits[0].index.equals(circuits[1].index) and len(circuits[0]) == 6 * (1 + 3 * 4 * 2)
    largest = float(entries[0].abs().max())
    assert largest > 1.0 and float((entries[0] - entries[1]).abs().max()) < 1e-4 * largest
    by_hand = torch.tensor([by_hand_entries(gemma3_hf[0], asked.entity_ids, facts[fact], circuit, layer, head)
                            for fact, circuit, layer, head in circuits[0].index], dtype=torch.float64)
    for table in entries:
        assert float((table - by_hand).abs().max()) < 1e-4 * largest


def by_hand_entries(hf, entity_ids, fact: Fact, circuit: str, layer: int, head: int) -> tuple[float, float]:
    """A Gemma 3's (M[A, B], M[B, A]) for ``fact`` from its Hugging Face weights in float64, as the test above
    states them (``circuit`` "direct": √d · mean(E[a]) · mean((1 + w_final) ⊙ E[b]))."""
    config, model = hf.config, hf.model
    E = model.embed_tokens.weight.detach()
    mean = {name: E[list(entity_ids(name))].double().mean(0) for name in (fact.subject, fact.object)}
    final = {name: (1 + model.norm.weight.detach().double()) * row for name, row in mean.items()}
    if circuit == "direct":
        x = {name: config.hidden_size ** 0.5 * row for name, row in mean.items()}
        return (float(x[fact.subject] @ final[fact.object]), float(x[fact.object] @ final[fact.subject]))
    block = model.layers[layer]
    attention, d_head = block.self_attn, config.head_dim
    x = {name: config.hidden_size ** 0.5 * row * (1 + block.input_layernorm.weight.detach().double())
         for name, row in mean.items()}
    group = head // (config.num_attention_heads // config.num_key_value_heads)
    W_Q, W_K, W_V = (projection.weight.detach().double().view(-1, d_head, config.hidden_size)[index]
                     for projection, index in ((attention.q_proj, head), (attention.k_proj, group),
                                               (attention.v_proj, group)))
    W_O = attention.o_proj.weight.detach().double().view(config.hidden_size, -1, d_head)[:, head]
    if circuit == "ov":
        written = 1 + block.post_attention_layernorm.weight.detach().double()
        ov = {name: written * (W_O @ (W_V @ row)) for name, row in x.items()}
        return float(ov[fact.subject] @ final[fact.object]), float(ov[fact.object] @ final[fact.subject])
    query, key = (1 + norm.weight.detach().double() for norm in (attention.q_norm, attention.k_norm))
    q = {name: query * (W_Q @ row) for name, row in x.items()}
    k = {name: key * (W_K @ row) for name, row in x.items()}
    return float(q[fact.subject] @ k[fact.object]), float(q[fact.object] @ k[fact.subject])


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_facts_tokenized_with_another_model_s_tokenizer_are_refused(architecture, celebrities, tiny_models):
    """A word-level tokenizer's ids all lie inside a tiny model's 2,048-token vocabulary: the log-probabilities and
    circuits read with it were of other tokens, silently. answer_table, candidate scoring and circuit_table refuse
    facts tokenized so, naming both tokenizers' sizes; a copy of the model's own tokenizer, told to add BOS or not,
    is the same tokenizer and passes."""
    from tiny_models import word_tokenizer

    from probes.logits import candidate_logprobs

    model = tiny_models[architecture].backends["hooked"]
    first = FactSet(celebrities.facts[:N_PAIRS], world="celebrity")
    templates = TEMPLATE_FAMILIES[DEFAULT_TEMPLATES]
    other = TemplateTokenizer(word_tokenizer("<bos>"), templates)
    assert max(max(other.example(first, 0, d).prompt) for d in ("forward", "reverse")) < model.cfg.d_vocab
    refused = rf"{model.cfg.model_name}: the facts are tokenized with another tokenizer than the model's own " \
              r"\(10 tokens"
    with pytest.raises(ValueError, match=refused):
        answer_table(model, first, other, n_controls=1, rank_against="controls")
    with pytest.raises(ValueError, match=refused):
        candidate_logprobs(model, first, other, [(0, "forward")], [first[1].object])
    with pytest.raises(ValueError, match=refused):
        circuit_table(model, first, other.entity_ids, kinds=("direct",))
    for adds_bos in (False, True):
        own = copy.deepcopy(model.tokenizer)
        own.add_bos_token = adds_bos
        table = answer_table(model, first, TemplateTokenizer(own, templates), n_controls=1, rank_against="controls")
        assert len(table) == 2 * N_PAIRS and table.logprob.notna().all()
    assert len(circuit_table(model, first, TemplateTokenizer(model.tokenizer, templates).entity_ids,
                             kinds=("direct",))) == N_PAIRS


def test_a_tokenizer_that_adds_bos_gets_it_in_both_commands(bos_tokenizer, celebrities, tiny_models):
    gemma = tiny_models["gemma3"].backends["hooked"]
    bos = bos_tokenizer.bos_token_id
    probed, probe_lp, check_lp = logprobs_of_both_commands(gemma, bos_tokenizer, celebrities)
    without = TemplateTokenizer(bos_tokenizer, TEMPLATE_FAMILIES[DEFAULT_TEMPLATES], prefix=())
    for direction in ("forward", "reverse"):  # the same tokens, one BOS before them
        plain = without.example(celebrities, 0, direction)
        assert probed.statements.example(celebrities, 0, direction).prompt == (bos, *plain.prompt)
        assert plain.prompt[0] != bos
    assert (probe_lp - check_lp).abs().max() < 1e-4


def test_finetune_sentences_start_with_bos_when_the_tokenizer_adds_it(bos_tokenizer, smollm2_tokenizer):
    people = people_world(n_per_group=2, seed=0, groups=("p2d",))
    for tokenizer, starts in ((bos_tokenizer, True), (smollm2_tokenizer, False)):
        batch = training_sentences(people, tokenizer, templates=1, pad_id=0, reverse_training=True)
        first_tokens = batch.tokens[:, 0]
        assert bool((first_tokens == tokenizer.bos_token_id).all()) is starts
        text = render_statement(people, 0, "forward", TRAIN_TEMPLATES, 0).text
        reversed_sentence = reversed_example(people, 0, "forward", text, 0, tokenizer)
        assert (reversed_sentence.prompt[0] == tokenizer.bos_token_id) is starts


def folder_with_post_processor(folder, single: str, bos_token: str | None):
    """A tiny random Llama saved with a word-level tokenizer whose post-processor adds what ``single`` says
    ("<start> $A": <start>, id 1, before every encoding), with ``bos_token`` or none."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from tiny_models import save_tiny, tiny_config

    words = ["<unk>", "<start>", "<eos>", "<s>", "a", "The", "capital", "of", "France", "is", "Paris", "."]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = [(word, words.index(word)) for word in ("<start>", "<eos>") if word in single.split()]
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                                     bos_token=bos_token)
    return save_tiny(folder, tiny_config("llama"), tokenizer)


@pytest.mark.parametrize("bos_token", [None, "<s>"], ids=["no-bos-token", "another-bos-token"])
def test_a_leading_token_other_than_bos_is_in_every_prompt(tmp_path, bos_token):
    """From an audit: the tokenizer encodes "The capital" as [1, 5, 6] (<start> first) and the prompt rule
    gave [5, 6]: the model was scored on prompts it never reads in use. Now the rule, the tokenizer and
    `probe`'s prompts agree, and the loaders say the tokenizer prepends, on both backends."""
    folder = folder_with_post_processor(tmp_path / "starts-with-start", "<start> $A", bos_token)
    facts = FactSet(load_celebrity_pairs().facts[:1], world="celebrity")
    for backend in ("hooked", "bridge"):
        model = load(folder, backend=backend, device="cpu")
        assert bos_prefix(model.tokenizer) == (1,) and model.cfg.default_prepend_bos
        assert model.tokenizer("The capital").input_ids == [1, 5, 6]
        probed = pretrained_probed(model, model.tokenizer, "celebrity", {})
        assert probed.statements.example(facts, 0, "forward").prompt[:2] == (1, 0)  # <start>, then unknown words


@pytest.mark.parametrize("bos_token", [None, "<s>"], ids=["no-bos-token", "another-bos-token"])
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_to_tokens_of_a_leading_token_other_than_bos_is_the_tokenizer_s(tmp_path, backend, bos_token):
    """``model.to_tokens(s)`` is ``tokenizer(s).input_ids`` (models/pretrained.py's promise). Before the rule
    read the leading token, HookedTransformer gave [5, 6] without a BOS token (cfg.default_prepend_bos False); a
    TransformerBridge given a tokenizer without a BOS token keeps it (with TransformerLens's BOS, <eos>, set on it),
    and TransformerLens's own test (first id == BOS id) put <eos> after <start>: [1, 2, 5, 6]."""
    folder = folder_with_post_processor(tmp_path / "starts-with-start", "<start> $A", bos_token)
    model = load(folder, backend=backend, device="cpu")
    assert model.tokenizer("The capital").input_ids == [1, 5, 6]
    assert model.to_tokens("The capital")[0].tolist() == [1, 5, 6]
    assert model.to_tokens("The capital", prepend_bos=False)[0].tolist() == [5, 6]


def test_a_tokenizer_that_ends_its_encodings_with_eos_is_refused_at_load(tmp_path):
    folder = folder_with_post_processor(tmp_path / "ends-with-eos", "<start> $A <eos>", None)
    with pytest.raises(ValueError, match=r"encodes 'a' as \[1, 4, 2\] with its special tokens and \[4\] without"):
        load(folder, backend="hooked", device="cpu")
