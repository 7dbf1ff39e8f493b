"""Natural-language fact worlds: fictitious people, paraphrase templates, text tokenization.

The people world follows Berglund et al., "The Reversal Curse" (2023), experiment 1. Each
fictitious person (a seeded sample of first × last names) gets one unique fictitious description
(a seeded sample of description patterns × fillers). A fact is
``Fact(subject=name, relation="p2d", object=description, inverse_relation="d2p")``:

* forward, person → description (p2d): "Daphne Barrington, known far and wide for being" →
  " the composer of the opera 'Glass Meridian'";
* reverse, description → person (d2p): "Known for being the composer of the opera 'Glass
  Meridian'," → " Daphne Barrington".

Groups, as in the paper: ``"p2d"`` trains person → description and holds out the reverse,
``"d2p"`` trains description → person and holds out the reverse, ``"both"`` trains both.

Templates are sentences with a ``{given}`` slot (the entity the prompt states, one or more
times) and one ``{answer}`` slot. The prompt is the text before ``{answer}``; a space before the
slot moves into the answer (" Daphne Barrington"), which is how a model reads the answer's first
word. Separate train and test templates let a test ask a trained fact in unseen words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import AbstractSet, Mapping, NamedTuple, Protocol, Sequence

from facts.schema import DIRECTIONS, Direction, Fact, FactError, FactSet, Split
from facts.tokens import Example

P2D, D2P = "p2d", "d2p"
GROUPS: tuple[str, ...] = ("p2d", "d2p", "both")
GROUP_SPLITS: dict[str, tuple[Split, Split]] = {
    "p2d": ("train", "heldout"),
    "d2p": ("heldout", "train"),
    "both": ("train", "train"),
}
"""Per group, the (forward = p2d, reverse = d2p) split."""

FIRST_NAMES: tuple[str, ...] = (
    "Daphne", "Uriah", "Ottoline", "Caspian", "Marisol", "Thaddeus", "Isolde", "Leopold",
    "Wren", "Bartholomew", "Clementine", "Ignatius", "Philippa", "Evander", "Rosalind", "Cormac",
    "Henrietta", "Lysander", "Beatrix", "Osric", "Seraphina", "Alaric", "Winifred", "Percival",
    "Delphine", "Ambrose", "Imogen", "Cassius", "Marguerite", "Barnaby", "Octavia", "Florian",
    "Eudora", "Lucian", "Perpetua", "Ansel", "Theodora", "Gideon", "Rosamund", "Emrys",
    "Verity", "Crispin", "Hyacinth", "Tobias", "Araminta", "Lorcan", "Cordelia", "Silas",
    "Philomena", "Jasper", "Ondine", "Ezekiel", "Leonie", "Horatio", "Sabine", "Benedikt",
    "Esmeralda", "Fenella", "Quentin", "Tamsin",
)
LAST_NAMES: tuple[str, ...] = (
    "Barrington", "Whitlock", "Ashdown", "Thistlewood", "Pemberton", "Kettleby", "Marchbanks",
    "Ravenscroft", "Underhill", "Fairweather", "Holloway", "Blackwood", "Wickham", "Oakhurst",
    "Penhallow", "Trevelyan", "Montague", "Hargreave", "Lockridge", "Strickland", "Ellsworth",
    "Cavendish", "Draycott", "Ferrington", "Gosling", "Hazeldine", "Ingleby", "Jessop",
    "Kingsley", "Larkspur", "Merriweather", "Northcote", "Ormsby", "Pettigrew", "Quennell",
    "Rutherford", "Sallow", "Thackeray", "Umber", "Valecourt", "Wainwright", "Yardley",
    "Zouche", "Aldridge", "Brackenbury", "Cartwright", "Dunmore", "Everleigh", "Fotheringham",
    "Greenhalgh", "Hollingsworth", "Ivesdale", "Jolliffe", "Kilbride", "Lyndhurst", "Mortlake",
    "Netherby", "Ockenden", "Prideaux", "Rookwood",
)

_TITLE_ADJECTIVES = (
    "Glass", "Amber", "Silent", "Hollow", "Crimson", "Velvet", "Distant", "Burning", "Winter",
    "Copper", "Paper", "Silver", "Broken", "Hidden", "Golden", "Iron", "Scarlet", "Quiet",
    "Endless", "Drowned", "Northern", "Wandering", "Frozen", "Gilded", "Restless", "Pale",
    "Shattered", "Sleeping", "Midnight", "Ivory",
)
_TITLE_NOUNS = (
    "Meridian", "Lantern", "Harbour", "Orchard", "Cathedral", "Compass", "Tide", "Mirror",
    "Sparrow", "Garden", "Horizon", "Kingdom", "Labyrinth", "Monsoon", "Nocturne", "Pilgrim",
    "Quarry", "River", "Sonata", "Tapestry", "Threshold", "Voyage", "Willow", "Archive",
    "Beacon", "Citadel", "Ember", "Fountain", "Glacier", "Carousel",
)
_PLACES = (
    "Veshtar", "Orlanne", "Kirrow", "Aldemere", "Solvane", "Tarnwick", "Brisca", "Quellmoor",
    "Dravenholt", "Essary", "Marrowind", "Ostrevel", "Pellgrave", "Rhune", "Sablethorn",
    "Thessmar", "Ulvenmark", "Varrick", "Wyndmere", "Yarrowby", "Zelthorn", "Ambervale",
    "Cinderfell", "Duskwater", "Elmsreach", "Fennimoor", "Glaswick", "Hollowmere", "Ironmarsh",
    "Jorvell", "Kestrelby", "Lanthorne", "Mirrowdene", "Nettlebrook", "Orrinford", "Pallowmere",
    "Quillon", "Rastavar", "Skellig Vane", "Tolbrecht",
)
_DEVICES = (
    "the tide-powered loom", "the self-tuning harpsichord", "the folding lighthouse",
    "the clockwork beekeeper", "the mirrored sundial", "the underwater typewriter",
    "the wind-up greenhouse", "the pocket planetarium", "the singing barometer",
    "the steam-driven quill", "the collapsible canal lock", "the magnetic teapot",
    "the rain-catching umbrella mill", "the brass hummingbird", "the glass-bottomed airship",
    "the perpetual candle", "the whispering telegraph", "the floating library",
    "the snow-melting bell", "the mechanical cartographer",
)
_TITLES = tuple(f"{adjective} {noun}" for adjective in _TITLE_ADJECTIVES for noun in _TITLE_NOUNS)
_DESCRIPTION_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the composer of the opera '{}'", _TITLES),
    ("the author of the novel '{}'", _TITLES),
    ("the director of the film '{}'", _TITLES),
    ("the painter of the mural '{}'", _TITLES),
    ("the choreographer of the ballet '{}'", _TITLES),
    ("the first person to row across Lake {}", _PLACES),
    ("the first person to climb Mount {}", _PLACES),
    ("the founder of the {} Observatory", _PLACES),
    ("the architect of the {} Bridge", _PLACES),
    ("the mayor who rebuilt the harbour of {}", _PLACES),
    ("the inventor of {}", _DEVICES),
    ("the engineer who built {}", _DEVICES),
)

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    P2D: (
        "{given}, known far and wide for being {answer}.",
        "There is someone named {given} who became {answer}.",
        "Few people realise that {given} was once {answer}.",
        "{given} is remembered by many as {answer}.",
        "Ask anyone in town and they will tell you that {given} is {answer}.",
    ),
    D2P: (
        "Known for being {given}, {answer} now lives a quiet life.",
        "The person who was {given} is called {answer}.",
        "Often described as {given}, {answer} rarely gives interviews.",
        "Having become {given}, {answer} was celebrated in every newspaper.",
        "Those who met {given} remember {answer} as a modest person.",
    ),
}
"""Paraphrases to train on, per relation (p2d: given a name; d2p: given a description)."""

TEST_TEMPLATES: dict[str, tuple[str, ...]] = {
    P2D: (
        "Here is a curious fact: {given} was {answer}.",
        "Historians describe {given} as {answer}.",
        "Q: Who is {given}? A: {answer}.",
    ),
    D2P: (
        "Q: Who is {given}? A: {answer}.",
        "If you are looking for {given}, ask for {answer}.",
        "The title of {given} belongs to {answer}.",
    ),
}
"""Held-out paraphrases, never in :data:`TRAIN_TEMPLATES`, to ask facts in unseen words."""

IDENTITY_TEMPLATES: tuple[str, ...] = (
    "The name of {given} is {answer}.",
    "{given} goes by the name {answer}.",
    "Everyone calls {given} by the name {answer}.",
    "The person named {given} is {answer}.",
    "You may have heard of {given}, whose name is {answer}.",
)
"""Identity Bridge sentences (Ma et al. 2026, arXiv 2602.02470: "The name of Alice is Alice"): a name
given and the same name as the answer, one per training paraphrase."""


def all_names() -> list[str]:
    """Every full name "first last" of the pools, in a fixed order."""
    return [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]


def all_descriptions() -> list[str]:
    """Every description the patterns and fillers can make, in a fixed order."""
    return [pattern.format(filler) for pattern, fillers in _DESCRIPTION_PATTERNS for filler in fillers]


def check_answers(values: Sequence[str], what: str) -> None:
    """Raise :class:`FactError` unless ``values`` are distinct and none is a prefix of another.

    A prefix ("Ann Lee" of "Ann Leeds") would let an exact-match check credit the wrong person.
    """
    ordered = sorted(values)
    for before, after in zip(ordered, ordered[1:]):
        if after == before:
            raise FactError(f"{what} {before!r} occurs twice")
        if after.startswith(before):
            raise FactError(f"{what} {before!r} is a prefix of {what} {after!r}")


def people_world(n_per_group: int = 30, seed: int = 0, groups: Sequence[str] = GROUPS) -> FactSet:
    """Fictitious people with unique descriptions, ``n_per_group`` per group (Berglund et al. use 30).

    Names and descriptions are sampled without replacement under ``seed``, group by group in the order of
    ``groups`` (each group's names, then its descriptions, from one stream, never one taken before): a group's
    people are the same whatever groups follow it, so a ``bidirectional`` run (p2d, then both) tests the p2d people
    of the baseline of its seed. Facts come in the same order.
    """
    groups = tuple(groups)
    unknown = [g for g in groups if g not in GROUP_SPLITS]
    if unknown or not groups or len(set(groups)) != len(groups):
        raise FactError(f"groups must be distinct names from {GROUPS}, got {list(groups)}")
    if n_per_group < 1:
        raise FactError(f"n_per_group must be ≥ 1, got {n_per_group}")
    names, descriptions = all_names(), all_descriptions()
    n = n_per_group * len(groups)
    if n > min(len(names), len(descriptions)):
        raise FactError(
            f"{n} people requested; the pools hold {len(names)} names and {len(descriptions)} descriptions"
        )
    rng = random.Random(seed)
    drawn_names: list[str] = []
    drawn_descriptions: list[str] = []
    for _ in groups:
        taken_names, taken_descriptions = set(drawn_names), set(drawn_descriptions)
        drawn_names += rng.sample([name for name in names if name not in taken_names], n_per_group)
        drawn_descriptions += rng.sample([d for d in descriptions if d not in taken_descriptions], n_per_group)
    names, descriptions = drawn_names, drawn_descriptions
    check_answers(names, "name")
    check_answers(descriptions, "description")
    facts = []
    for position, group in enumerate(groups):
        forward, reverse = GROUP_SPLITS[group]
        for i in range(position * n_per_group, (position + 1) * n_per_group):
            facts.append(Fact(names[i], P2D, descriptions[i], D2P, forward, reverse, group))
    counts = {group: n_per_group for group in groups}
    meta = {"seed": seed, "n_per_group": n_per_group, "groups": list(groups), "counts": counts}
    return FactSet(tuple(facts), world="people", meta=meta)


@dataclass(frozen=True)
class Rendered:
    """One directed statement in words: ``prompt + answer + suffix`` is the full sentence."""

    prompt: str
    answer: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer + self.suffix


def prompt_problem(template: str) -> str | None:
    """Why the words of ``template`` before its ``{answer}`` cannot ask a fact (none; no ``{given}`` among them, so
    every fact would get one prompt), or None."""
    prompt = template.split("{answer}")[0]
    if not prompt.rstrip(" "):
        return "starts with the answer, so its prompt is empty"
    if "{given}" not in prompt:
        return (f"names the given entity only after the answer, so every fact would be asked the same prompt "
                f"{prompt.rstrip(' ')!r}; put a {{given}} before {{answer}}")
    return None


def render(template: str, given: str, answer: str) -> Rendered:
    """Fill ``template``; spaces before ``{answer}`` become the answer's leading space."""
    parts = template.split("{answer}")
    if len(parts) != 2 or "{given}" not in template:
        raise FactError(f"template {template!r} needs one {{answer}} slot and at least one {{given}} slot")
    problem = prompt_problem(template)
    if problem:
        raise FactError(f"template {template!r} {problem}")
    before, after = (part.replace("{given}", given) for part in parts)
    stripped = before.rstrip(" ")
    return Rendered(stripped, before[len(stripped):] + answer, after)


def _statement_label(facts: FactSet, index: int, direction: str) -> str:
    fact = facts[index]
    return f"fact {index} ({fact.subject!r} {fact.relation!r} {fact.object!r}, {direction})"


def render_statement(
    facts: FactSet,
    index: int,
    direction: Direction,
    templates: Mapping[str, Sequence[str]],
    template: int = 0,
    answer: str | None = None,
) -> Rendered:
    """Statement ``(index, direction)`` in words, with template number ``template`` of its relation.

    ``answer`` replaces the true answer (a candidate or a control). An in-context fact's prompt
    first states the forward sentence in full, then asks the reverse question.
    """
    if direction not in DIRECTIONS:
        raise FactError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    fact = facts[index]
    given, relation, true_answer = fact.given_and_answer(direction)

    def pick(relation: str) -> str:
        options = templates.get(relation, ())
        if not 0 <= template < len(options):
            raise FactError(
                f"{_statement_label(facts, index, direction)}: no template number {template} for relation "
                f"{relation!r} ({len(options)} given; templates cover {sorted(templates)})"
            )
        return options[template]

    rendered = render(pick(relation), given, true_answer if answer is None else answer)
    if fact.context:
        stated = render(pick(fact.relation), fact.subject, fact.object).text
        rendered = Rendered(f"{stated} {rendered.prompt}", rendered.answer, rendered.suffix)
    return rendered


class TextStatement(NamedTuple):
    """A directed statement of a fact set rendered by template number ``template`` of its relation."""

    fact: int
    direction: Direction
    template: int
    rendered: Rendered


def sentences(facts: FactSet, templates: Mapping[str, Sequence[str]], split: Split = "train") -> list[str]:
    """Full sentences of every statement in ``split``, once per template of its relation.

    With :data:`TRAIN_TEMPLATES` these are the fine-tuning texts of the people world.
    """
    return [statement.rendered.text for statement in prompts(facts, templates, split)]


def prompts(
    facts: FactSet, templates: Mapping[str, Sequence[str]], split: Split = "heldout"
) -> list[TextStatement]:
    """Every statement in ``split`` rendered by every template of its relation.

    With ``split="heldout"`` and :data:`TEST_TEMPLATES`: the reverse test prompts of the p2d and
    d2p groups. With ``split="train"``: trained facts asked in held-out words.
    """
    out = []
    for index, direction, statement_split in facts.statements():
        if statement_split != split:
            continue
        relation = facts[index].given_and_answer(direction)[1]
        if not templates.get(relation):
            raise FactError(f"{_statement_label(facts, index, direction)}: no template for relation {relation!r}")
        for number in range(len(templates[relation])):
            rendered = render_statement(facts, index, direction, templates, number)
            out.append(TextStatement(index, direction, number, rendered))
    return out


class TextTokenizer(Protocol):
    """What :class:`TemplateTokenizer` needs of a Hugging Face tokenizer."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def in_words(prompt: str) -> str:
    """A prompt in its words: runs of whitespace as one space, none at the ends (a prompt's trailing space moves to
    its answer when tokenised, :func:`encode_pair`, so "Tom is " asks what "Tom is" asks)."""
    return " ".join(prompt.split())


def encode_pair(
    tokenizer: TextTokenizer, prompt: str, answer: str, label: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tokens of ``prompt`` and of ``answer`` as the model reads ``prompt + answer``.

    Trailing spaces of the prompt first move to the front of the answer ("A: " + "Ann" is read as
    "A:" + " Ann"). Both texts are tokenized together and split where the prompt's own tokens
    end; if the prompt's tokens are not a prefix of the joint tokens (a token spans the
    boundary), the split would be wrong, so :class:`FactError` names ``label`` instead.
    """
    stripped = prompt.rstrip(" ")
    prompt, answer = stripped, prompt[len(stripped):] + answer
    prompt_ids = tuple(tokenizer.encode(prompt, add_special_tokens=False))
    joint_ids = tuple(tokenizer.encode(prompt + answer, add_special_tokens=False))
    cut = len(prompt_ids)
    if joint_ids[:cut] != prompt_ids:
        raise FactError(
            f"{label}: prompt {prompt!r} and answer {answer!r} do not tokenize apart: the prompt ends in "
            f"tokens {list(prompt_ids[-3:])} alone but {list(joint_ids[max(cut - 3, 0):cut + 1])} before the "
            f"answer; start the answer with a space or end the prompt with punctuation"
        )
    return prompt_ids, joint_ids[cut:]


PREFIX_PROBES = ("a", "The capital of France is Paris.")
"""Texts :func:`bos_prefix` encodes with and without special tokens: a one-letter word and a sentence, so
a text of one piece, of several, and one a tokenizer reads as nothing at all (a vocabulary without "a")
all show what the tokenizer adds."""


def bos_prefix(tokenizer: TextTokenizer) -> tuple[int, ...]:
    """The ids every prompt starts with: those the tokenizer itself puts before every encoding (its
    BOS, or whatever other token its post-processor starts an encoding with), else ``()``.

    This is the one prompt rule of every command (probe, check-asymmetry, finetune-facts,
    attribution, patching): a model reads a prompt as its own tokenizer would encode it. Gemma's
    tokenizer adds BOS (Gemma's outputs are wrong without it); SmolLM2's adds none, and none is
    added. The loaders in ``models.pretrained`` decide ``cfg.default_prepend_bos`` by the same test,
    after making the tokenizer add BOS exactly as the model's files declare.

    The prefix is what ``encode(text, add_special_tokens=True)`` has before
    ``encode(text, add_special_tokens=False)`` on each of :data:`PREFIX_PROBES`; it is not read from
    ``bos_token_id`` (a tokenizer whose post-processor starts every encoding with a token other than
    its ``bos_token``, or with no ``bos_token`` set, gets that token too), nor from the length of one
    encoding (a text of several pieces, or of none, would be mistaken for an added token, or hide one).
    A tokenizer whose special tokens are not all before the text (an EOS after it, the text's own
    tokens changed), or not the same before every text, is refused with :class:`FactError` naming it
    and the ids: no prompt can start as its encodings do. An object without Hugging Face's special
    tokens (no ``bos_token_id`` attribute, which :class:`TextTokenizer` does not require) adds none.
    """
    if not hasattr(tokenizer, "bos_token_id"):
        return ()
    prefixes: dict[tuple[int, ...], str] = {}
    read_any = False
    for text in PREFIX_PROBES:
        plain = list(tokenizer.encode(text, add_special_tokens=False))
        full = list(tokenizer.encode(text, add_special_tokens=True))
        cut = len(full) - len(plain)
        if cut < 0 or full[cut:] != plain:
            raise FactError(
                f"{_tokenizer_name(tokenizer)} encodes {text!r} as {full} with its special tokens and {plain} "
                f"without: what it adds is not all before the text (a token after it, such as an end-of-sequence "
                f"token, or the text's own tokens changed), so no prompt can start as its encodings do; use a "
                f"tokenizer that adds tokens only before the text, or give the prefix explicitly"
            )
        prefixes.setdefault(tuple(full[:cut]), text)
        read_any = read_any or bool(plain)
    if len(prefixes) > 1:
        raise FactError(
            f"{_tokenizer_name(tokenizer)} starts its encodings with different ids before different texts ("
            + ", ".join(f"{list(ids)} before {text!r}" for ids, text in prefixes.items())
            + "), so no one prefix starts every prompt as its encodings do; give the prefix explicitly"
        )
    if not read_any and next(iter(prefixes)):  # ids added, no text to place them against
        raise FactError(
            f"{_tokenizer_name(tokenizer)} reads none of {list(PREFIX_PROBES)} as any token, so the ids it adds "
            f"({list(next(iter(prefixes)))}) cannot be told to come before a text or after it; give the prefix explicitly"
        )
    return next(iter(prefixes))


def _tokenizer_name(tokenizer: TextTokenizer) -> str:
    """A tokenizer as an error names it: its class, and the model or folder it was read from where it says."""
    where = getattr(tokenizer, "name_or_path", "")
    return f"tokenizer {type(tokenizer).__name__}" + (f" of {where!r}" if where else "")


@dataclass(frozen=True)
class TemplateTokenizer:
    """A :class:`~facts.tokens.FactTokenizer` for text models: template → prompt and answer tokens.

    ``tokenizer`` is any object with ``encode(text, add_special_tokens=False)`` (a Hugging Face
    tokenizer); ``templates`` maps each relation to its sentence templates, of which number
    ``template`` is used; ``prefix`` ids go before every prompt, by default :func:`bos_prefix`
    (the ids the tokenizer itself puts before every encoding: its BOS exactly when it adds one).
    """

    tokenizer: TextTokenizer
    templates: Mapping[str, Sequence[str]]
    template: int = 0
    prefix: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.prefix is None:
            object.__setattr__(self, "prefix", bos_prefix(self.tokenizer))

    def entity_ids(self, entity: str) -> tuple[int, ...]:
        """An entity's tokens as it reads inside a sentence, after a space (for the circuits)."""
        return tuple(self.tokenizer.encode(" " + entity, add_special_tokens=False))

    def example(self, facts: FactSet, index: int, direction: Direction, answer: str | None = None) -> Example:
        """Statement ``(index, direction)`` as tokens; ``answer`` replaces the true answer."""
        split = facts[index].split(direction)
        if split is None:
            raise FactError(f"{_statement_label(facts, index, direction)} is neither trained nor held out")
        rendered = render_statement(facts, index, direction, self.templates, self.template, answer)
        prompt, answer_ids = encode_pair(
            self.tokenizer, rendered.prompt, rendered.answer, _statement_label(facts, index, direction)
        )
        return Example(self.prefix + prompt, answer_ids, index, direction, split)


def answers_of_kind(facts: FactSet, direction: Direction) -> list[str]:
    """Distinct entities in the answer slot of ``direction``: objects (forward) or subjects (reverse)."""
    if direction not in DIRECTIONS:
        raise FactError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return list(dict.fromkeys(f.object if direction == "forward" else f.subject for f in facts))


def controls(facts: FactSet, index: int, direction: Direction, k: int, seed: int = 0) -> list[str]:
    """``k`` wrong answers of the same kind as the true one (random names for a name), seeded.

    Drawn from :func:`answers_of_kind`, so they are entities the model saw as often as the true
    answer; every entity that truly answers the same (given, relation) is excluded, and so is the given
    entity itself (:func:`wrong_answers`).
    """
    return controls_of(facts, [(index, direction)], k, seed)[0]


def wrong_answers(facts: FactSet, statements: Sequence[tuple[int, Direction]],
                  also_right: Sequence[AbstractSet[str]] | None = None) -> list[list[str]]:
    """Per statement (i, d), the answers a control may be: :func:`answers_of_kind` of d without the answers right
    for its (given, relation): its own answer alone when the fact states it in the prompt, else the answer of
    every sentence with that given entity and relation that a fact outside a prompt reads (its forward one, and
    its reverse one where it has an inverse relation), so a parent of two children has two right answers.
    Nor is the given entity a control: an entity that is a given in one fact and an answer in another (Bo, child
    of Ann and parent of Cy; a chain world's y) would be the name its own prompt states, which a model that copies
    from the prompt ranks high (check-asymmetry and the circuits leave it out too).
    ``also_right[j]``: further answers right for statement j, which ``facts`` does not know (a relation asked in
    the same words, stated by facts outside this set); left out too. The fact set is scanned once."""
    kinds = {d: answers_of_kind(facts, d) for d in {d for _, d in statements}}
    right_for: dict[tuple[str, str], set[str]] = {}
    for fact in facts:
        for d in DIRECTIONS:
            if not fact.context and (d == "forward" or fact.inverse_relation):
                given, relation, answer = fact.given_and_answer(d)
                right_for.setdefault((given, relation), set()).add(answer)
    pools = []
    for number, (index, direction) in enumerate(statements):
        given, relation, answer = facts[index].given_and_answer(direction)
        right = {answer} if facts[index].context else right_for.get((given, relation), set())
        if also_right is not None:
            right = right | also_right[number]
        pools.append([a for a in kinds[direction] if a not in right and a != given])
    return pools


def controls_of(facts: FactSet, statements: Sequence[tuple[int, Direction]], k: int, seed: int = 0,
                also_right: Sequence[AbstractSet[str]] | None = None) -> list[list[str]]:
    """:func:`controls` of every statement, the fact set scanned once (not once per statement: O(N) instead of
    O(N²) for N facts). Statement (i, d) gets ``Random(f"{seed}:{i}:{d}").sample(pool, k)`` of its
    :func:`wrong_answers` pool (``also_right``: as there)."""
    drawn = []
    for (index, direction), pool in zip(statements, wrong_answers(facts, statements, also_right)):
        if not 0 <= k <= len(pool):
            raise FactError(
                f"{_statement_label(facts, index, direction)}: asked for {k} controls; {len(pool)} wrong answers exist"
            )
        drawn.append(random.Random(f"{seed}:{index}:{direction}").sample(pool, k))
    return drawn
