"""Fictitious-people worlds, templates, the text tokenizer and random-answer controls."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facts.language import (
    D2P,
    FIRST_NAMES,
    GROUPS,
    LAST_NAMES,
    P2D,
    TEST_TEMPLATES,
    TRAIN_TEMPLATES,
    Rendered,
    TemplateTokenizer,
    all_descriptions,
    all_names,
    answers_of_kind,
    check_answers,
    controls,
    controls_of,
    people_world,
    prompts,
    render,
    render_statement,
    sentences,
)
from facts.celebrity import load_celebrity_pairs
from facts.schema import DIRECTIONS, Fact, FactError, FactSet
from facts.tokens import FactTokenizer, tokenize


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    """The real SmolLM2 tokenizer (session fixture in tests/conftest.py)."""
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def world() -> FactSet:
    return people_world()


# --- pools and the world -------------------------------------------------------------------


def test_pools_are_distinct_and_prefix_free():
    assert len(FIRST_NAMES) == len(set(FIRST_NAMES)) == 60
    assert len(LAST_NAMES) == len(set(LAST_NAMES)) == 60
    check_answers(all_names(), "name")  # every full name: so every sample of them, any seed
    check_answers(all_descriptions(), "description")
    assert len(all_descriptions()) >= len(all_names())


@pytest.mark.parametrize(
    ("values", "message"),
    [(["Ann Lee", "Bo Ray", "Ann Lee"], "occurs twice"), (["Ann Leeds", "Ann Lee"], "prefix")],
)
def test_check_answers_rejects_duplicates_and_prefixes(values, message):
    with pytest.raises(FactError, match=message):
        check_answers(values, "name")


def test_default_world_matches_berglund_groups(world):
    assert world.world == "people" and len(world) == 90
    counts = dict.fromkeys(GROUPS, 30)
    assert world.meta == {"seed": 0, "n_per_group": 30, "groups": list(GROUPS), "counts": counts}
    splits = {(f.group, f.forward, f.reverse) for f in world}
    assert splits == {("p2d", "train", "heldout"), ("d2p", "heldout", "train"), ("both", "train", "train")}
    assert all((f.relation, f.inverse_relation) == (P2D, D2P) for f in world)
    assert world.count("train") == 120 and world.count("heldout") == 60


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_per_group=st.integers(1, 400))
def test_people_are_unique_and_deterministic(seed, n_per_group):
    facts = people_world(n_per_group=n_per_group, seed=seed)
    names, descriptions = [f.subject for f in facts], [f.object for f in facts]
    assert len(set(names)) == len(set(descriptions)) == len(facts) == 3 * n_per_group
    check_answers(names, "name")
    check_answers(descriptions, "description")
    assert set(names) <= set(all_names()) and set(descriptions) <= set(all_descriptions())
    assert people_world(n_per_group=n_per_group, seed=seed) == facts


def test_seeds_differ_and_groups_select():
    assert people_world(seed=0) != people_world(seed=1)
    only = people_world(n_per_group=5, groups=("d2p",))
    assert len(only) == 5 and {f.group for f in only} == {"d2p"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": ("p2d", "sideways")}, "groups must be"),
        ({"groups": ("p2d", "p2d")}, "groups must be"),
        ({"groups": ()}, "groups must be"),
        ({"n_per_group": 0}, "n_per_group"),
        ({"n_per_group": 1201}, "3603 people requested"),
    ],
)
def test_people_world_rejects_bad_arguments(kwargs, message):
    with pytest.raises(FactError, match=message):
        people_world(**kwargs)


# --- templates and rendering -----------------------------------------------------------------


def test_templates_split_train_from_test():
    for relation in (P2D, D2P):
        assert len(TRAIN_TEMPLATES[relation]) == 5 and len(TEST_TEMPLATES[relation]) == 3
        assert not set(TRAIN_TEMPLATES[relation]) & set(TEST_TEMPLATES[relation])


def test_render_moves_the_space_into_the_answer():
    rendered = render("{given}, known far and wide for being {answer}.", "Daphne Barrington", "the pilot")
    assert rendered == Rendered("Daphne Barrington, known far and wide for being", " the pilot", ".")
    assert rendered.text == "Daphne Barrington, known far and wide for being the pilot."
    assert render("{given} is {given}'s {answer}", "X", "y") == Rendered("X is X's", " y", "")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{given} has no answer slot", "one {answer} slot"),
        ("{given} {answer} and {answer}", "one {answer} slot"),
        ("no given {answer}", "one {answer} slot"),
        ("{answer} is {given}", "prompt is empty"),
    ],
)
def test_render_rejects_bad_templates(template, message):
    with pytest.raises(FactError, match=message):
        render(template, "a", "b")


def test_sentences_and_test_prompts(world):
    train = sentences(world, TRAIN_TEMPLATES)
    assert len(train) == world.count("train") * 5 and len(set(train)) == len(train)
    fact = world[0]  # group p2d: trained person → description, asked description → person
    assert f"{fact.subject}, known far and wide for being {fact.object}." in train
    assert not any(s.startswith(f"Known for being {fact.object},") for s in train)

    held_out = prompts(world, TEST_TEMPLATES)
    assert len(held_out) == world.count("heldout") * 3
    directions = {(world[s.fact].group, s.direction) for s in held_out}
    assert directions == {("p2d", "reverse"), ("d2p", "forward")}
    index, direction, template, rendered = held_out[0]
    assert (index, direction, template) == (0, "reverse", 0)
    assert [s.template for s in held_out[:4]] == [0, 1, 2, 0]
    assert rendered == Rendered(f"Q: Who is {fact.object}? A:", f" {fact.subject}", ".")


def test_render_statement_errors_name_the_fact(world):
    with pytest.raises(FactError, match=r"fact 0 \(.*, reverse\): no template number 7"):
        render_statement(world, 0, "reverse", TEST_TEMPLATES, template=7)
    with pytest.raises(FactError, match="no template number 0 for relation 'd2p'"):
        render_statement(world, 0, "reverse", {P2D: TRAIN_TEMPLATES[P2D]})
    with pytest.raises(FactError, match="direction must be"):
        render_statement(world, 0, "sideways", TEST_TEMPLATES)  # type: ignore[arg-type]
    with pytest.raises(FactError, match="no template for relation 'd2p'"):
        prompts(world, {P2D: TRAIN_TEMPLATES[P2D]})


def test_in_context_fact_states_the_forward_sentence_first():
    facts = FactSet((Fact("Ann Lee", P2D, "the pilot", D2P, forward=None, reverse="heldout", context=True),))
    rendered = render_statement(facts, 0, "reverse", TRAIN_TEMPLATES)
    assert rendered.prompt == "Ann Lee, known far and wide for being the pilot. Known for being the pilot,"
    assert rendered.answer == " Ann Lee"


# --- tokenization -----------------------------------------------------------------------------


def test_template_tokenizer_splits_prompt_and_answer(tok, world):
    tokenizer: FactTokenizer = TemplateTokenizer(tok, TRAIN_TEMPLATES)
    fact = world[0]
    example = tokenizer.example(world, 0, "forward")
    assert (example.fact, example.direction, example.split) == (0, "forward", "train")
    assert tok.decode(list(example.prompt)) == f"{fact.subject}, known far and wide for being"
    assert tok.decode(list(example.answer)) == f" {fact.object}"
    reverse = tokenizer.example(world, 0, "reverse")
    assert reverse.split == "heldout"
    assert tok.decode(list(reverse.prompt)) == f"Known for being {fact.object},"
    assert tok.decode(list(reverse.answer)) == f" {fact.subject}"
    assert list(reverse.prompt + reverse.answer) == tok.encode(
        f"Known for being {fact.object}, {fact.subject}", add_special_tokens=False
    )


def test_every_template_tokenizes_cleanly(tok, world):
    for templates in (TRAIN_TEMPLATES, TEST_TEMPLATES):
        for number in range(len(templates[P2D])):
            batch = tokenize(world, TemplateTokenizer(tok, templates, number))
            assert len(batch) == world.count("train") + world.count("heldout")


def test_every_name_and_description_tokenizes_cleanly(tok):
    everyone = people_world(n_per_group=1200)  # all 3600 names
    for templates in (TRAIN_TEMPLATES, TEST_TEMPLATES):
        assert len(tokenize(everyone, TemplateTokenizer(tok, templates))) == 7200


def test_answer_override_and_prefix(tok, world):
    tokenizer = TemplateTokenizer(tok, TEST_TEMPLATES, template=1, prefix=(tok.bos_token_id,))
    true = tokenizer.example(world, 3, "reverse")
    control = controls(world, 3, "reverse", k=1)[0]
    other = tokenizer.example(world, 3, "reverse", control)
    assert true.prompt == other.prompt and true.prompt[0] == tok.bos_token_id
    assert tok.decode(list(other.answer)) == f" {control}"


def test_unclean_boundary_names_the_fact(tok):
    facts = FactSet((Fact("Ann Lee", "says", "ld"),))
    with pytest.raises(FactError, match=r"fact 0 \('Ann Lee' 'says' 'ld', forward\): prompt 'Ann Lee says wor'"):
        TemplateTokenizer(tok, {"says": ("{given} says wor{answer}",)}).example(facts, 0, "forward")


def test_statement_out_of_play_is_rejected(tok):
    facts = FactSet((Fact("Ann Lee", P2D, "the pilot", D2P),))  # reverse not in play
    with pytest.raises(FactError, match="neither trained nor held out"):
        TemplateTokenizer(tok, TRAIN_TEMPLATES).example(facts, 0, "reverse")


# --- controls ---------------------------------------------------------------------------------


def test_controls_are_wrong_answers_of_the_same_kind(world):
    names, descriptions = set(answers_of_kind(world, "reverse")), set(answers_of_kind(world, "forward"))
    assert names == {f.subject for f in world} and descriptions == {f.object for f in world}
    for index in range(len(world)):
        picked = controls(world, index, "reverse", k=5, seed=3)
        assert len(set(picked)) == 5 and set(picked) <= names and world[index].subject not in picked
        assert picked == controls(world, index, "reverse", k=5, seed=3)
        described = controls(world, index, "forward", k=5, seed=3)
        assert set(described) <= descriptions and world[index].object not in described
    assert controls(world, 0, "reverse", k=5, seed=3) != controls(world, 0, "reverse", k=5, seed=4)
    assert controls(world, 0, "reverse", k=5, seed=3) != controls(world, 1, "reverse", k=5, seed=3)
    assert sorted(controls(world, 0, "reverse", k=89)) == sorted(names - {world[0].subject})


def _controls_by_definition(facts: FactSet, index: int, direction: str, k: int, seed: int) -> list[str]:
    """The draw as :func:`controls` defines it, each fact set scanned anew: answers of the kind, minus the
    answers right for the same (given, relation) (only its own for a fact stated in the prompt)."""
    given, relation, answer = facts[index].given_and_answer(direction)
    right = {answer} if facts[index].context else {
        fact.given_and_answer(d)[2] for fact in facts for d in DIRECTIONS
        if not fact.context and (d == "forward" or fact.inverse_relation)
        and fact.given_and_answer(d)[:2] == (given, relation)}
    pool = [a for a in answers_of_kind(facts, direction) if a not in right]
    return random.Random(f"{seed}:{index}:{direction}").sample(pool, k)


def test_controls_of_many_statements_are_each_statements_own_draw():
    """Real celebrity pairs (a parent with several children: several right answers share a given entity and
    relation) plus facts stated in the prompt about the same people."""
    celebrity = load_celebrity_pairs()
    plain = list(celebrity)[:300]  # held out both ways, as check-asymmetry asks them
    stated = [Fact(f.subject, f.relation, f.object, f.inverse_relation, None, "heldout", context=True)
              for f in plain[:40]]
    facts = FactSet(tuple(plain + stated))
    statements = [(i, d) for i, d, _ in facts.statements()]
    children = {}
    for fact in plain:  # the reverse question "<parent> mother of ..." has each of the parent's children right
        children.setdefault(fact.given_and_answer("reverse")[:2], set()).add(fact.subject)
    assert max(len(right) for right in children.values()) > 1
    drawn = controls_of(facts, statements, 6, seed=2)
    assert drawn == [_controls_by_definition(facts, i, d, 6, 2) for i, d in statements]
    assert [controls(facts, i, d, 6, seed=2) for i, d in statements[:25]] == drawn[:25]


def test_controls_reject_too_many(world):
    with pytest.raises(FactError, match="asked for 90 controls; 89 wrong answers exist"):
        controls(world, 0, "forward", k=90)
