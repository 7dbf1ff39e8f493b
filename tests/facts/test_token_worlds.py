import pytest

from facts.schema import FactError
from facts.token_worlds import chain_world, in_context_world, reversal_world
from facts.tokens import Example, collate, tokenize


def test_reversal_world_has_the_papers_split(world):
    assert len(world) == 200
    assert world.count("train") == 340
    assert world.count("heldout") == 60
    groups = [f.group for f in world]
    assert groups.count("both") == 140 and groups.count("one-way") == 60
    for fact in world:
        if fact.group == "one-way":
            assert {fact.forward, fact.reverse} == {"train", "heldout"}
    # both directions of held-out pairs occur: the held-out direction is chosen at random per pair
    assert {f.forward for f in world if f.group == "one-way"} == {"train", "heldout"}


def test_reversal_world_alphabets_are_disjoint_and_pairs_unique(world):
    xs = {f.subject for f in world}
    ys = {f.object for f in world}
    assert len(xs) == len(ys) == 200
    assert not xs & ys


def test_same_seed_same_world_and_different_seed_differs():
    assert reversal_world(seed=3) == reversal_world(seed=3)
    assert reversal_world(seed=3) != reversal_world(seed=4)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_token_entities(k, vocab):
    world = reversal_world(n_pairs=50, k=k, seed=1)
    batch = tokenize(world, vocab)
    assert set(batch.answer_len.tolist()) == {k}
    assert set(batch.prompt_len.tolist()) == {k + 1}
    assert len({f.subject for f in world}) == 50


def test_tokenized_view_reads_the_sentences(world, vocab):
    batch = tokenize(world, vocab)
    first = world[0]
    forward_row = [i for i in range(len(batch)) if batch.fact[i] == 0 and batch.direction[i] == "forward"][0]
    x, y = vocab.entity_ids(first.subject)[0], vocab.entity_ids(first.object)[0]
    assert batch.tokens[forward_row].tolist() == [x, vocab.relation_id("→"), y]
    assert batch.answer_mask[forward_row].tolist() == [False, False, True]
    reverse = batch.where(direction="reverse")
    assert all(t[1] == vocab.relation_id("←") for t in reverse.tokens.tolist())


def test_collate_pads_ragged_rows_on_the_right_and_marks_only_answer_tokens():
    examples = [Example((5,), (6, 7, 8), 0, "forward", "train"), Example((1, 2, 3, 4), (9,), 1, "reverse", "heldout"),
                Example((3, 3), (4, 4), 2, "forward", "heldout")]
    batch = collate(examples, pad_id=-1)
    assert batch.tokens.tolist() == [[5, 6, 7, 8, -1], [1, 2, 3, 4, 9], [3, 3, 4, 4, -1]]
    assert batch.answer_mask.int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 1, 1, 0]]
    assert batch.prompt_len.tolist() == [1, 4, 2] and batch.answer_len.tolist() == [3, 1, 2]
    assert batch.fact.tolist() == [0, 1, 2] and batch.direction == ("forward", "reverse", "forward")
    assert batch.split == ("train", "heldout", "heldout")


def test_chain_world_split():
    world = chain_world(seed=0)
    assert len(world) == 600
    leads_to = [f for f in world if f.relation == "⇝"]
    assert len(leads_to) == 200
    assert sum(f.forward == "heldout" for f in leads_to) == 60
    # every chain fact shares its middle entity with the x → y fact of the same triple
    for i in range(0, 600, 3):
        xy, yz, xz = world[i], world[i + 1], world[i + 2]
        assert xy.object == yz.subject and xz.subject == xy.subject and xz.object == yz.object
        assert xy.forward == yz.forward == "train"


def test_in_context_world_restates_the_fact_in_the_prompt(vocab):
    world = in_context_world(seed=0)
    assert len(world) == 1000
    assert world.count("heldout") == 300
    example = vocab.example(world, 0, "reverse")
    x, y = world[0].subject, world[0].object
    arrow, back, restate = (vocab.relation_id(r) for r in ("→", "←", "<->"))
    assert example.prompt == (*vocab.entity_ids(x), arrow, *vocab.entity_ids(y), restate, *vocab.entity_ids(y), back)
    assert example.answer == vocab.entity_ids(x)
    # each x is paired with many y: the pair cannot be memorised
    assert len({f.object for f in world if f.subject == x}) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k must be ≥ 1"),
        (dict(n_pairs=201), "cannot be made from an alphabet of 200"),
        (dict(alphabet_size=500), "need 1000 entity tokens"),
        (dict(n_pairs=0), "number of pairs must be ≥ 1"),
    ],
)
def test_bad_world_parameters_are_named(kwargs, message):
    with pytest.raises(FactError, match=message):
        reversal_world(**kwargs)


def test_unknown_entity_tokens_are_refused(vocab):
    with pytest.raises(FactError, match="outside the vocabulary"):
        vocab.entity_ids("e800")
    with pytest.raises(FactError, match="not of the form"):
        vocab.entity_ids("Tom")
    with pytest.raises(FactError, match="not one of the reserved tokens"):
        vocab.relation_id("is the parent of")
