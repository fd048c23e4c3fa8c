"""The shared world of the built-in corpora: who, where, what, and the words that carry feeling.

Stories, reviews and instructions draw on these tables, so a model that has learned one corpus
already knows the vocabulary of the others. The sentiment lexicon is shared on purpose: a
classifier trained on tiny-reviews must be able to judge how a tiny-stories story ends.

Every table is a tuple, never a set: the generators pick from them with `rng.choice`, and a
set's order would change with hash randomisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from random import Random

# --- the sentiment lexicon -----------------------------------------------------------------
# Story endings and review verdicts use these words; story bodies and neutral review sentences
# never do, so the feeling of a text lives only where the label says it does.
POSITIVE = (
    "happy", "glad", "wonderful", "great", "love", "loved", "smile", "smiled", "good", "best",
    "fun", "nice", "lovely", "perfect", "amazing", "proud", "laughed", "enjoyed", "beautiful",
    "fantastic", "excellent", "cheered",
)
NEGATIVE = (
    "sad", "terrible", "awful", "lost", "cried", "hate", "hated", "bad", "worst", "boring",
    "bored", "dull", "broke", "broken", "angry", "upset", "lonely", "ruined", "horrible",
    "disappointed", "scared", "ugly",
)
# Words that reverse the next sentiment word of their clause ("not bad at all" is positive);
# any word ending in "n't" does too.
NEGATORS = ("not", "never", "no")

# (positive, negative) pairs with the same grammar, for the "opposite feeling" instructions;
# one to one, so every sentence has exactly one opposite.
FEELING_ANTONYMS = (("happy", "sad"), ("glad", "upset"))  # how a character felt
THING_ANTONYMS = (  # what a thing or a day was like
    ("wonderful", "terrible"), ("great", "awful"), ("lovely", "horrible"), ("good", "bad"),
    ("fun", "boring"), ("nice", "ugly"),
)
VERB_ANTONYMS = (("loved", "hated"), ("smiled", "cried"))

# --- grammar helpers -----------------------------------------------------------------------


def article(phrase: str) -> str:
    """'a' or 'an' for a phrase, by its first letter. Right for every word in these tables,
    which leave out the exceptions ('a unicorn', 'an hour') instead of listing them."""
    return "an" if phrase[0] in "aeiouAEIOU" else "a"


def a(phrase: str) -> str:
    """The phrase with its indefinite article: a('owl') == 'an owl'."""
    return f"{article(phrase)} {phrase}"


def cap(text: str) -> str:
    """The first letter upper-cased (after any opening quote); the rest left alone."""
    if text[0].isalpha():  # the common case, kept cheap: every sentence passes here
        return text[0].upper() + text[1:]
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


def possessive(noun_phrase: str) -> str:
    # No name here ends in "s" (no "Lucas's" to decide about); "the princess's" is right.
    return noun_phrase + "'s"


PRONOUNS = {  # subject, object, possessive, reflexive
    "he": ("he", "him", "his", "himself"),
    "she": ("she", "her", "her", "herself"),
    "they": ("they", "them", "their", "themselves"),
}


@dataclass(frozen=True)
class Character:
    intro: str  # the first mention, indefinite: "a little girl named Lily", "an old owl"
    ref: str  # every later mention: "Lily", "the owl", "Tom and Mia"
    pronoun: str  # "he" | "she" | "they"
    kind: str  # "person" | "animal" | "pair"

    def slots(self, prefix: str = "") -> dict[str, str]:
        """Template fields for this character: {name} {he} {him} {his} {himself} {was}, and
        {I} {me} {my} for what the character says aloud; prefixed ("f_he") for a second one."""
        he, him, his, himself = PRONOUNS[self.pronoun]
        plural = self.pronoun == "they"
        return {
            prefix + "name": self.ref, prefix + "name_s": possessive(self.ref),
            prefix + "he": he, prefix + "him": him, prefix + "his": his,
            prefix + "himself": himself, prefix + "was": "were" if plural else "was",
            prefix + "I": "we" if plural else "I", prefix + "me": "us" if plural else "me",
            prefix + "my": "our" if plural else "my",
        }


# --- who -----------------------------------------------------------------------------------
# No name ends in "s" (see `possessive`).
GIRLS = (
    "Lily", "Mia", "Anna", "Emma", "Lucy", "Sara", "Zoe", "Ella", "Rose", "Ivy", "Grace", "Ruby",
    "Maya", "Nora", "Chloe", "Sophie", "Hannah", "Julia", "Clara", "Alice", "Amy", "Eva", "Kate",
    "Molly", "Jane", "Daisy", "Lena", "Nina", "Poppy", "Olivia", "Hazel", "Luna", "Bella", "Fiona",
)
BOYS = (
    "Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Finn", "Noah", "Oscar", "Hugo", "Theo", "Luke",
    "Adam", "Eli", "Oliver", "Henry", "Jake", "Owen", "Peter", "Paul", "Ryan", "Dan", "Tim", "Joe",
    "Leon", "Milo", "Felix", "Harry", "Ethan", "Arthur", "Jonah", "Omar", "Victor", "Carl",
)
PET_NAMES = (
    "Pip", "Spot", "Coco", "Rex", "Fluffy", "Buddy", "Patch", "Pepper", "Ginger", "Biscuit",
    "Shadow", "Rusty", "Bingo", "Pebble", "Button", "Toffee", "Maple", "Hopper", "Snowy", "Dot",
)
# (noun, pronoun or None for either): children take child adjectives, the rest adult ones.
CHILDREN = (("girl", "she"), ("boy", "he"))
ADULTS = (
    ("woman", "she"), ("man", "he"), ("princess", "she"), ("prince", "he"), ("queen", "she"),
    ("king", "he"), ("grandmother", "she"), ("grandfather", "he"), ("farmer", None),
    ("baker", None), ("sailor", None), ("painter", None), ("teacher", None), ("doctor", None),
    ("knight", None), ("fisherman", "he"), ("tailor", None), ("gardener", None),
)
CHILD_ADJECTIVES = ("little", "young", "small", "shy", "curious", "clever", "brave", "quiet")
ADULT_ADJECTIVES = ("old", "young", "tall", "busy", "clever", "quiet", "brave", "gentle")
ANIMALS = (
    "cat", "dog", "rabbit", "fox", "owl", "bear", "mouse", "duck", "frog", "pig", "horse",
    "goat", "sheep", "chick", "puppy", "kitten", "bunny", "hedgehog", "otter", "deer", "squirrel",
    "turtle", "lamb", "elephant", "bird", "monkey", "donkey", "badger",
)
ANIMAL_ADJECTIVES = (
    "little", "small", "big", "old", "young", "brown", "white", "gray", "black", "spotted",
    "fluffy", "shy", "curious", "clever", "sleepy", "orange",
)
TRAITS = ("curious", "shy", "quiet", "clever", "careful", "busy", "brave", "gentle", "strong",
          "fast", "sleepy", "bold", "calm", "funny")


def person(rng: Random, avoid: tuple[str, ...] = ()) -> Character:
    """A named (mostly) or unnamed person; the pronoun follows the noun, the name the pronoun."""
    noun, pronoun = rng.choice(CHILDREN if rng.random() < 0.5 else ADULTS)
    pronoun = pronoun or rng.choice(("he", "she"))
    adjective = rng.choice(CHILD_ADJECTIVES if noun in ("girl", "boy") else ADULT_ADJECTIVES)
    described = f"{adjective} {noun}" if rng.random() < 0.7 else noun
    if rng.random() < 0.8:
        name = _fresh(rng, GIRLS if pronoun == "she" else BOYS, avoid)
        return Character(f"{a(described)} named {name}", name, pronoun, "person")
    return Character(a(described), f"the {noun}", pronoun, "person")


def animal(rng: Random, avoid: tuple[str, ...] = ()) -> Character:
    noun = rng.choice(ANIMALS)
    described = f"{rng.choice(ANIMAL_ADJECTIVES)} {noun}" if rng.random() < 0.8 else noun
    pronoun = rng.choice(("he", "she"))
    if rng.random() < 0.6:
        name = _fresh(rng, PET_NAMES, avoid)
        return Character(f"{a(described)} named {name}", name, pronoun, "animal")
    return Character(a(described), f"the {noun}", pronoun, "animal")


def pair(rng: Random, avoid: tuple[str, ...] = ()) -> Character:
    """Two people told as one 'they': "two friends named Tom and Mia"."""
    boy, girl = _fresh(rng, BOYS, avoid), _fresh(rng, GIRLS, avoid)
    how = rng.choice(("two friends", "a brother and sister", "twins", "two cousins",
                      "two little friends", "a boy and a girl"))
    boy_first = how in ("a brother and sister", "a boy and a girl") or rng.random() < 0.5
    first, second = (boy, girl) if boy_first else (girl, boy)
    names = f"{first} and {second}"
    return Character(f"{how} named {names}", names, "they", "pair")


def character(rng: Random, kind: str, avoid: tuple[str, ...] = ()) -> Character:
    return {"person": person, "animal": animal, "pair": pair}[kind](rng, avoid)


def _fresh(rng: Random, names: tuple[str, ...], avoid: tuple[str, ...]) -> str:
    while True:  # `avoid` holds a few names at most, so this ends at once
        name = rng.choice(names)
        if name not in avoid:
            return name


def names_in(c: Character) -> tuple[str, ...]:
    """The words of `c`'s name, which a second character's name must avoid: two Lilys in
    one story would make every "Lily" ambiguous."""
    return tuple(re.findall(r"[A-Za-z]+", c.ref))


# --- where ---------------------------------------------------------------------------------
# (place, its preposition): "in the park", "on the beach".
PLACES = (
    ("park", "in"), ("garden", "in"), ("forest", "in"), ("beach", "on"), ("hill", "on"),
    ("river", "by"), ("lake", "by"), ("market", "at"), ("farm", "on"), ("school", "at"),
    ("library", "in"), ("kitchen", "in"), ("zoo", "at"), ("village", "in"), ("meadow", "in"),
    ("pond", "by"), ("harbor", "at"), ("playground", "at"), ("field", "in"), ("barn", "in"),
    ("town square", "in"), ("orchard", "in"), ("woods", "in"), ("bridge", "near"),
    ("station", "at"), ("castle", "in"), ("museum", "in"), ("bakery", "at"), ("island", "on"),
    ("attic", "in"), ("yard", "in"), ("camp", "at"),
)
OUTDOORS = ("park", "garden", "beach", "hill", "meadow", "field", "orchard", "yard", "island")
WATERSIDE = ("river", "lake", "pond", "harbor")
HOMES = (  # where a character lives: "who lived near the sea"
    "near the sea", "by a big forest", "on a quiet farm", "next to a river", "near a tall hill",
    "at the edge of the woods", "in a small town", "by a lake", "near the mountains",
    "in a busy city", "on a little island", "in a valley full of flowers", "behind the old mill",
    "at the end of a long road",
)


_PREPOSITION = dict(PLACES)


def at(place: str) -> str:
    """'in the park', 'on the beach'."""
    return f"{_PREPOSITION[place]} the {place}"


# --- what ----------------------------------------------------------------------------------
COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black",
          "brown", "gold", "silver")
# (noun, adjectives, tags): "keep" things can be lost, "high" can get stuck up a tree,
# "wear" can go on a snowman.
THINGS = (
    ("ball", COLORS + ("big", "small", "bouncy"), ("keep", "high")),
    ("kite", COLORS + ("big", "paper", "striped"), ("keep", "high")),
    ("balloon", COLORS + ("big", "shiny"), ("keep", "high")),
    ("hat", COLORS + ("old", "straw", "woolly"), ("keep", "high", "wear")),
    ("scarf", COLORS + ("long", "woolly", "striped"), ("keep", "high", "wear")),
    ("paper plane", COLORS + ("little", "fast"), ("keep", "high")),
    ("toy boat", COLORS + ("little", "wooden"), ("keep",)),
    ("drum", COLORS + ("little", "old"), ("keep",)),
    ("teddy bear", ("brown", "white", "soft", "old", "little", "big"), ("keep",)),
    ("toy train", COLORS + ("little", "wooden", "old"), ("keep",)),
    ("key", ("gold", "silver", "old", "tiny", "heavy", "rusty"), ("keep",)),
    ("coin", ("gold", "silver", "old", "shiny", "tiny"), ("keep",)),
    ("shell", ("pink", "white", "striped", "tiny", "round", "shiny"), ("keep",)),
    ("ring", ("gold", "silver", "little", "shiny"), ("keep",)),
    ("feather", ("blue", "white", "long", "soft", "green"), ("keep", "high")),
    ("stone", ("smooth", "round", "white", "shiny", "flat"), ("keep",)),
    ("map", ("old", "secret", "paper", "folded"), ("keep",)),
    ("box", COLORS + ("little", "wooden", "old", "tin"), ("keep",)),
    ("bell", ("gold", "silver", "little", "brass"), ("keep",)),
    ("marble", COLORS + ("glass", "tiny", "shiny"), ("keep",)),
    ("umbrella", COLORS + ("old", "big", "spotted"), ("keep", "high")),
    ("book", COLORS + ("old", "thick", "little"), ("keep",)),
    ("flute", ("wooden", "silver", "little"), ("keep",)),
    ("lamp", ("old", "little", "brass", "paper"), ("keep",)),
    ("jar", ("glass", "little", "blue", "empty"), ("keep",)),
    ("cap", COLORS + ("old", "woolly"), ("keep", "high", "wear")),
)
# Things to eat: (noun, adjectives) and their plurals for the counting instructions.
FOODS = (
    ("cake", ("big", "chocolate", "lemon", "honey", "little")),
    ("pie", ("apple", "cherry", "warm", "big", "plum")),
    ("apple", ("red", "green", "big", "shiny")),
    ("pear", ("green", "yellow", "big", "ripe")),
    ("loaf of bread", ("warm", "big", "round", "fresh")),
    ("muffin", ("blueberry", "little", "warm", "big")),
    ("sandwich", ("cheese", "big", "jam", "egg")),
    ("orange", ("big", "round", "juicy")),
    ("plum", ("purple", "ripe", "little")),
    ("cookie", ("big", "oat", "ginger", "warm")),
    ("tart", ("lemon", "plum", "little", "cherry")),
)
PLURALS = {
    "ball": "balls", "kite": "kites", "balloon": "balloons", "hat": "hats", "key": "keys",
    "coin": "coins", "shell": "shells", "ring": "rings", "feather": "feathers",
    "stone": "stones", "box": "boxes", "bell": "bells", "marble": "marbles", "book": "books",
    "apple": "apples", "pear": "pears", "orange": "oranges", "plum": "plums",
    "cookie": "cookies", "muffin": "muffins", "egg": "eggs", "cup": "cups", "flower": "flowers",
    "cherry": "cherries", "acorn": "acorns", "button": "buttons", "crayon": "crayons",
}
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# What a character does on an ordinary day: (base, past, -ing).
PERSON_ACTIVITIES = (
    ("draw pictures", "drew pictures", "drawing pictures"),
    ("read books", "read books", "reading books"),
    ("sing songs", "sang songs", "singing songs"),
    ("build towers of blocks", "built towers of blocks", "building towers of blocks"),
    ("watch the birds", "watched the birds", "watching the birds"),
    ("collect shells", "collected shells", "collecting shells"),
    ("climb trees", "climbed trees", "climbing trees"),
    ("bake bread", "baked bread", "baking bread"),
    ("pick flowers", "picked flowers", "picking flowers"),
    ("count the stars", "counted the stars", "counting the stars"),
    ("jump in puddles", "jumped in puddles", "jumping in puddles"),
    ("fly kites", "flew kites", "flying kites"),
    ("dig in the sand", "dug in the sand", "digging in the sand"),
    ("feed the ducks", "fed the ducks", "feeding the ducks"),
    ("ride a bike", "rode a bike", "riding a bike"),
    ("play the drum", "played the drum", "playing the drum"),
    ("look for bugs", "looked for bugs", "looking for bugs"),
    ("make paper boats", "made paper boats", "making paper boats"),
    ("tell stories", "told stories", "telling stories"),
    ("swim in the lake", "swam in the lake", "swimming in the lake"),
    ("walk by the river", "walked by the river", "walking by the river"),
    ("help in the garden", "helped in the garden", "helping in the garden"),
    ("play hide and seek", "played hide and seek", "playing hide and seek"),
    ("write little poems", "wrote little poems", "writing little poems"),
    ("fix old clocks", "fixed old clocks", "fixing old clocks"),
    ("grow tomatoes", "grew tomatoes", "growing tomatoes"),
)
ANIMAL_ACTIVITIES = (
    ("chase butterflies", "chased butterflies", "chasing butterflies"),
    ("dig holes", "dug holes", "digging holes"),
    ("sleep in the sun", "slept in the sun", "sleeping in the sun"),
    ("roll in the grass", "rolled in the grass", "rolling in the grass"),
    ("hop around the meadow", "hopped around the meadow", "hopping around the meadow"),
    ("look for nuts", "looked for nuts", "looking for nuts"),
    ("splash in the pond", "splashed in the pond", "splashing in the pond"),
    ("chase leaves", "chased leaves", "chasing leaves"),
    ("watch the clouds", "watched the clouds", "watching the clouds"),
    ("nap under the trees", "napped under the trees", "napping under the trees"),
    ("sniff the flowers", "sniffed the flowers", "sniffing the flowers"),
    ("run in the field", "ran in the field", "running in the field"),
    ("climb the old fence", "climbed the old fence", "climbing the old fence"),
    ("hide in the tall grass", "hid in the tall grass", "hiding in the tall grass"),
)
