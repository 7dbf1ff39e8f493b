"""Fictitious-people worlds, templates, the text tokenizer and random-answer controls."""

from __future__ import annotations

import random
import re

import pytest
import transformers
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
    PREFIX_PROBES,
    answers_of_kind,
    bos_prefix,
    check_answers,
    controls,
    controls_of,
    people_world,
    prompts,
    render,
    render_statement,
    sentences,
    wrong_answers,
)
from facts.celebrity import load_celebrity_pairs
from facts.schema import DIRECTIONS, Fact, FactError, FactSet
from facts.token_worlds import chain_world
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


def test_a_group_s_people_do_not_depend_on_the_groups_after_it():
    """A bidirectional run (p2d, then both) drew its descriptions after twice as many names, so its p2d people had
    other descriptions than the baseline's of the same seed, and the two runs' p2d numbers were about different
    facts. Groups are drawn one after another: the p2d people are the baseline's, which are what one group's names,
    then its descriptions, from ``Random(seed)`` give (so the default world is unchanged)."""
    from analyses.finetune import MITIGATIONS

    for seed in (0, 7):
        baseline = people_world(n_per_group=16, seed=seed, groups=("p2d",))
        rng = random.Random(seed)
        names, descriptions = rng.sample(all_names(), 16), rng.sample(all_descriptions(), 16)
        assert [(f.subject, f.object) for f in baseline] == list(zip(names, descriptions))
        for groups in (MITIGATIONS["bidirectional"], ("p2d", "d2p", "both")):
            world = people_world(n_per_group=16, seed=seed, groups=groups)
            assert [f for f in world if f.group == "p2d"] == list(baseline), groups


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
        ("People say {answer} works with {given}", "names the given entity only after the answer"),
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


# --- the prompt rule: the ids a tokenizer puts before every encoding ---------------------------

CAPITALS = FactSet((Fact("France", "capital", "Paris"),))
CAPITAL_TEMPLATES = {"capital": ("The capital of {given} is {answer}",)}
WORDS = ["<unk>", "<start>", "<eos>", "<s>", "a", "The", "capital", "of", "France", "is", "Paris", "."]


def words_tokenizer(single: str | None, bos_token: str | None = None):
    """A whitespace word-level tokenizer over WORDS, built offline, whose post-processor adds what ``single``
    says around every encoding ("<start> $A": <start> before it; None: nothing), with ``bos_token`` or none."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if single is not None:
        specials = [(word, WORDS.index(word)) for word in ("<start>", "<eos>", "<s>") if word in single.split()]
        backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                                bos_token=bos_token)


@pytest.mark.parametrize("bos_token", [None, "<s>"], ids=["no-bos-token", "another-bos-token"])
def test_a_leading_token_other_than_bos_starts_every_prompt(bos_token):
    """A post-processor that starts every encoding with <start> (id 1), where the tokenizer has no BOS token or
    another one (<s>, id 3): every prompt starts with <start>, as the tokenizer's own encoding of it does
    (the rule read BOS alone, and gave these prompts without it)."""
    tokenizer = words_tokenizer("<start> $A", bos_token)
    assert tokenizer("The capital").input_ids == [1, 5, 6] and tokenizer.bos_token_id == (3 if bos_token else None)
    assert bos_prefix(tokenizer) == (1,)
    asked = TemplateTokenizer(tokenizer, CAPITAL_TEMPLATES)
    example = asked.example(CAPITALS, 0, "forward")
    assert list(example.prompt) == tokenizer("The capital of France is").input_ids == [1, 5, 6, 7, 8, 9]
    assert example.answer == (10,)
    assert asked.example(CAPITALS, 0, "forward", "a").prompt == example.prompt


@pytest.mark.parametrize("single, ids", [("$A <eos>", "[4, 2]"), ("<s> $A <eos>", "[3, 4, 2]")],
                         ids=["eos-after", "bos-before-and-eos-after"])
def test_a_tokenizer_that_adds_a_token_after_the_text_is_refused_by_name(single, ids):
    tokenizer = words_tokenizer(single, "<s>")
    message = (rf"tokenizer {type(tokenizer).__name__} encodes 'a' as {re.escape(ids)} with its special tokens and "
               rf"\[4\] without: what it adds is not all before the text \(a token after it")
    with pytest.raises(FactError, match=message):
        bos_prefix(tokenizer)
    with pytest.raises(FactError, match=message):
        TemplateTokenizer(tokenizer, CAPITAL_TEMPLATES)
    given = TemplateTokenizer(tokenizer, CAPITAL_TEMPLATES, prefix=(3,))  # a prefix given is not the rule's
    assert given.example(CAPITALS, 0, "forward").prompt == (3, 5, 6, 7, 8, 9)


def test_the_refusal_names_the_folder_the_tokenizer_was_read_from(tmp_path):
    words_tokenizer("$A <eos>").save_pretrained(tmp_path / "ends-with-eos")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "ends-with-eos")
    with pytest.raises(FactError, match=rf"tokenizer \w+ of '{re.escape(str(tmp_path / 'ends-with-eos'))}' encodes"):
        bos_prefix(tokenizer)


def test_bos_and_no_bos_tokenizers_keep_their_prefix(tok):
    """The cases the rule read right before: BOS exactly when the tokenizer adds it."""
    from tiny_models import word_tokenizer

    assert bos_prefix(tok) == () and tok.bos_token_id is not None  # SmolLM2: a BOS token, never added
    assert bos_prefix(word_tokenizer("<bos>", add_bos_token=True)) == (1,)
    assert bos_prefix(word_tokenizer("<bos>")) == ()
    assert bos_prefix(word_tokenizer()) == ()
    assert bos_prefix(words_tokenizer("<s> $A", "<s>")) == (3,)
    assert bos_prefix(words_tokenizer("<s> <start> $A", "<s>")) == (3, 1)  # every id before the text
    assert bos_prefix(words_tokenizer(None, "<s>")) == ()


def bpe_tokenizer(vocab: dict[str, int], bos_token: str, adds_bos: bool, unk_token: str | None):
    """A SentencePiece-like tokenizer (a "▁" before each word, no merges: one piece a character), built
    offline; ``unk_token`` None drops the characters it does not know."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.BPE(vocab, [], unk_token=unk_token, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos_token} $A",
                                                               special_tokens=[(bos_token, vocab[bos_token])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos_token, unk_token=unk_token)


def test_a_probe_word_of_several_pieces_or_of_none_does_not_mislead_the_rule():
    """The rule read one encoding of "a": BOS when it had more than one id and BOS first. "a" in two pieces
    whose first is the BOS token's id (BOS = unk, "▁" unknown) read as BOS added; "a" in no pieces (a
    vocabulary without it) hid the BOS added before it. Both measured wrong before this rule."""
    two_pieces = bpe_tokenizer({"<unk>": 0, "</s>": 1, "a": 2}, "<unk>", adds_bos=False, unk_token="<unk>")
    assert two_pieces.encode("a") == [0, 2] and two_pieces.bos_token_id == 0
    assert bos_prefix(two_pieces) == ()
    no_pieces = bpe_tokenizer({"<s>": 0, "T": 1}, "<s>", adds_bos=True, unk_token=None)
    assert no_pieces.encode("a") == [0] and no_pieces.encode("T") == [0, 1]
    assert bos_prefix(no_pieces) == (0,)
    two_and_bos = bpe_tokenizer({"<unk>": 0, "<s>": 1, "▁": 2, "a": 3}, "<s>", adds_bos=True, unk_token="<unk>")
    assert two_and_bos.encode("a") == [1, 2, 3] and bos_prefix(two_and_bos) == (1,)


def test_a_tokenizer_that_reads_no_probe_text_is_refused():
    blind = bpe_tokenizer({"<s>": 0, "</s>": 1}, "<s>", adds_bos=True, unk_token=None)
    assert [blind.encode(text) for text in PREFIX_PROBES] == [[0], [0]]
    with pytest.raises(FactError, match=r"reads none of .* as any token, so the ids it adds \(\[0\]\) cannot be told"):
        bos_prefix(blind)


class PrefixByText:
    """A Hugging Face-like tokenizer that puts a different id before a one-word text than before a longer one."""

    bos_token_id = None
    name_or_path = "by-text"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [len(word) for word in text.split()]
        return ([7] if len(ids) == 1 else [8]) + ids if add_special_tokens else ids


class EncodeOnly:
    """What :class:`~facts.language.TextTokenizer` asks for and nothing more: no special tokens."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [len(word) for word in text.split()]


def test_a_prefix_that_depends_on_the_text_is_refused_and_an_encode_only_tokenizer_adds_none():
    with pytest.raises(FactError, match=r"tokenizer PrefixByText of 'by-text' starts its encodings with different "
                                        r"ids before different texts \(\[7\] before 'a', \[8\] before 'The"):
        bos_prefix(PrefixByText())
    assert bos_prefix(EncodeOnly()) == ()


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
    answers right for the same (given, relation) (only its own for a fact stated in the prompt) and the given
    entity itself."""
    given, relation, answer = facts[index].given_and_answer(direction)
    right = {answer} if facts[index].context else {
        fact.given_and_answer(d)[2] for fact in facts for d in DIRECTIONS
        if not fact.context and (d == "forward" or fact.inverse_relation)
        and fact.given_and_answer(d)[:2] == (given, relation)}
    pool = [a for a in answers_of_kind(facts, direction) if a not in right | {given}]
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


def test_a_statement_s_own_given_entity_is_never_its_control():
    """Bo, child of Ann and parent of Cy: "Bo is the child of" had Bo, the name its prompt states, as its one wrong
    answer, and so had "Bo is the parent of" (check-asymmetry and the circuits left it out, the probe did not). A
    chain world's y is the given of "y → z" and an answer of "x → y" alike."""
    facts = FactSet((Fact("Ann", "is the parent of", "Bo", "is the child of", "train", "heldout"),
                     Fact("Bo", "is the parent of", "Cy", "is the child of", "train", "heldout")))
    statements = [(i, d) for i, d, _ in facts.statements()]
    assert dict(zip(statements, wrong_answers(facts, statements))) == {
        (0, "forward"): ["Cy"], (0, "reverse"): [], (1, "forward"): [], (1, "reverse"): ["Ann"]}
    with pytest.raises(FactError, match=r"fact 1 \('Bo' 'is the parent of' 'Cy', forward\): asked for 1 controls; 0"):
        controls(facts, 1, "forward", k=1)
    chain = chain_world(n_triples=20)
    statements = [(i, d) for i, d, _ in chain.statements()]
    pools = wrong_answers(chain, statements)
    assert all(chain[i].subject not in pool for (i, _), pool in zip(statements, pools))
    assert sorted({len(pool) for pool in pools}) == [38, 39]  # 40 objects; y → z leaves out z and y


def test_controls_reject_too_many(world):
    with pytest.raises(FactError, match="asked for 90 controls; 89 wrong answers exist"):
        controls(world, 0, "forward", k=90)
