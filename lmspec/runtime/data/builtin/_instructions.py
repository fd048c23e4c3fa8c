"""tiny-instructions: prompt/response pairs about the stories' world, one right answer each.

Eight kinds of task, each answered from the prompt alone by a fixed rule, so a model tuned on
them visibly learns to follow: copy the fact a question asks for, name a fitting place, judge a
review, say the opposite, choose "a" or "an", write an ending of the asked feeling. Where a
task has several good answers (an ending, a place) the one given is chosen by a checksum of
the prompt, never by the generator's rng: the same prompt always gets the same response, in
every seed.
"""

from __future__ import annotations

import zlib
from random import Random

from . import _reviews, _stories
from ._words import (
    ANIMALS, BOYS, COLORS, FEELING_ANTONYMS, FOODS, GIRLS, NUMBERS, PLURALS, THING_ANTONYMS,
    THINGS, VERB_ANTONYMS, a, at, cap,
)

COUNT = 6_000


def _choose(prompt: str, options):
    """The option a prompt gets, the same on every run and machine (unlike hash())."""
    return options[zlib.crc32(prompt.encode()) % len(options)]


def _name(rng: Random, avoid=()) -> tuple[str, str]:
    """(name, pronoun): the name alone says which pronoun is right."""
    while True:
        girl = rng.random() < 0.5
        name = rng.choice(GIRLS if girl else BOYS)
        if name not in avoid:
            return name, "she" if girl else "he"


def _thing(rng: Random) -> tuple[str, str]:
    """(phrase, noun): ("red paper plane", "paper plane")."""
    noun, adjectives, _ = rng.choice(THINGS)
    return (f"{rng.choice(adjectives)} {noun}" if rng.random() < 0.7 else noun), noun


# --- write an ending -----------------------------------------------------------------------
ENDINGS = {
    "happy": (
        "In the end, {name} found the {noun} and smiled. It was a wonderful day.",
        "In the end, {name} played with the {noun} all afternoon, and {he} {was} very happy.",
        "{name} held the {noun} close and laughed. It was the best day ever.",
        "In the end, the {noun} was safe, and {name} felt glad and proud.",
    ),
    "sad": (
        "In the end, the {noun} was lost, and {name} cried all the way home.",
        "In the end, the {noun} broke, and {name} {was} very sad.",
        "{name} never saw the {noun} again. It was a terrible day.",
        "In the end, the {noun} fell into the river, and {name} felt awful.",
    ),
}


def ending(rng: Random) -> tuple[str, str]:
    feeling = "happy" if rng.random() < 0.5 else "sad"
    name, he = _name(rng)
    thing, noun = _thing(rng)
    was = "was"
    asks = ("Write a {f} ending for a story about {who} and {a_thing}.",
            "Finish a story about {who} and {a_thing} with a {f} ending.",
            "Write a {f} ending to a story about {who}, who had {a_thing}.")
    who = name
    if rng.random() < 0.25:  # two heroes: "they were"
        other, _ = _name(rng, avoid=(name,))
        who, asks = f"{name}, {other}", asks[:2]
        name, he, was = f"{name} and {other}", "they", "were"
    prompt = rng.choice(asks).format(f=feeling, who=who, a_thing=a(thing))
    response = _choose(prompt, ENDINGS[feeling]).format(name=name, he=he, was=was, noun=noun)
    return prompt, cap(response)


# --- answer a question from the text -------------------------------------------------------
VERBS = (("found", "find"), ("saw", "see"), ("hid", "hide"), ("dropped", "drop"),
         ("painted", "paint"), ("bought", "buy"), ("carried", "carry"), ("lost", "lose"),
         ("picked up", "pick up"), ("washed", "wash"))
_PLACE_NAMES = ("park", "garden", "forest", "beach", "hill", "market", "farm", "school",
                "library", "kitchen", "zoo", "meadow", "barn", "field", "yard", "attic", "bakery",
                "pond", "river", "station")


def question(rng: Random) -> tuple[str, str]:
    """One to three facts; a question about one of them; the answer copies that fact."""
    names, nouns, places, facts = [], [], [], []
    past, base = rng.choice(VERBS)
    for _ in range(1 + int(rng.random() * 3)):
        name, _ = _name(rng, avoid=tuple(names))
        while True:  # no two facts about the same kind of thing: every question has one answer
            thing, noun = _thing(rng)
            if noun not in nouns:
                break
        place = rng.choice(tuple(p for p in _PLACE_NAMES if p not in places))
        names.append(name), nouns.append(noun), places.append(place)
        facts.append((name, thing, place))
    name, thing, place = facts[int(rng.random() * len(facts))]
    text = " ".join(f"{n} {past} {a(t)} {at(p)}." for n, t, p in facts)
    kind = rng.random()
    if kind < 0.45:
        ask, answer = f"What did {name} {base} {at(place)}?", f"{name} {past} {a(thing)}."
    elif kind < 0.75:
        ask, answer = f"Where did {name} {base} the {thing}?", f"{name} {past} the {thing} {at(place)}."
    else:
        ask, answer = f"Who {past} {a(thing)}?", f"{name} {past} {a(thing)}."
    prompt = f"{ask} {text}" if rng.random() < 0.5 else f"{text} {ask}"
    return prompt, answer


def color(rng: Random) -> tuple[str, str]:
    names, nouns, facts = [], [], []
    for _ in range(1 + int(rng.random() * 3)):
        name, _ = _name(rng, avoid=tuple(names))
        while True:
            noun, adjectives, _ = rng.choice(THINGS)
            shades = tuple(c for c in adjectives if c in COLORS)
            if shades and noun not in nouns:
                break
        names.append(name), nouns.append(noun)
        facts.append((name, noun, rng.choice(shades)))
    name, noun, shade = facts[int(rng.random() * len(facts))]
    text = " ".join(f"{n} had {a(c + ' ' + t)}." for n, t, c in facts)
    return f"{text} What color was the {noun}?", f"The {noun} was {shade}."


def count(rng: Random) -> tuple[str, str]:
    name, he = _name(rng)
    noun, other = _two_plurals(rng)
    if rng.random() < 0.3:  # a sum, up to ten
        n = 1 + int(rng.random() * 5)
        m = 1 + int(rng.random() * 5)
        friend, _ = _name(rng, avoid=(name,))
        him = {"he": "him", "she": "her"}[he]
        prompt = (f"{name} had {_many(n, noun)}. {friend} gave {him} {NUMBERS[m - 1]} more. "
                  f"How many {PLURALS[noun]} did {name} have then?")
        return prompt, f"{name} had {_many(n + m, noun)}."
    n = 1 + int(rng.random() * 10)
    m = 1 + int(rng.random() * 10)
    friend, _ = _name(rng, avoid=(name,))
    facts = [f"{name} had {_many(n, noun)}", f"{friend} had {_many(m, other)}"]
    if rng.random() < 0.5:
        facts.reverse()
    prompt = f"{facts[0]}, and {facts[1]}. How many {PLURALS[noun]} did {name} have?"
    return prompt, f"{name} had {_many(n, noun)}."


def _many(n: int, noun: str) -> str:
    return f"{NUMBERS[n - 1]} {noun if n == 1 else PLURALS[noun]}"


_COUNTABLE = tuple(sorted(PLURALS))


def _two_plurals(rng: Random) -> tuple[str, str]:
    i = int(rng.random() * len(_COUNTABLE))
    j = int(rng.random() * (len(_COUNTABLE) - 1))
    return _COUNTABLE[i], _COUNTABLE[j + (j >= i)]


# --- name a place --------------------------------------------------------------------------
# What someone could do, and the places where it fits.
ANIMAL_DOINGS = {
    "play": ("park", "garden", "meadow", "field", "yard"),
    "sleep": ("barn", "forest", "garden", "woods"),
    "hide": ("forest", "woods", "barn", "garden", "orchard"),
    "run": ("field", "meadow", "beach", "park"),
    "look for food": ("farm", "garden", "orchard", "forest", "field"),
}
SWIMMERS = ("duck", "frog", "otter", "turtle", "swan", "fish")
PERSON_DOINGS = {
    "read a book": ("library", "school", "garden", "park"),
    "buy bread": ("market", "bakery"),
    "see a lion": ("zoo",),
    "build a sandcastle": ("beach",),
    "catch a fish": ("lake", "river", "pond", "harbor"),
    "fly a kite": ("hill", "field", "beach", "park"),
    "see old paintings": ("museum",),
    "pick apples": ("orchard", "farm"),
    "wait for a train": ("station",),
    "feed the ducks": ("pond", "lake", "park"),
}
PEOPLE = ("a child", "a girl", "a boy", "a family", "a baker", "a farmer", "a teacher",
          "an old man", "an old woman", "a little girl", "a little boy")


def place(rng: Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        who = a(rng.choice(ANIMALS + ("swan", "fish")))
        doings = dict(ANIMAL_DOINGS)
        if who.split()[-1] in SWIMMERS:
            doings["swim"] = ("pond", "lake", "river")
    else:
        who, doings = rng.choice(PEOPLE), PERSON_DOINGS
        if rng.random() < 0.3:
            who, _ = _name(rng)
    doing = rng.choice(tuple(doings))
    ask = rng.choice(("Name a place where {who} could {doing}.", "Where could {who} {doing}?"))
    prompt = ask.format(who=who, doing=doing)
    return prompt, cap(f"{who} could {doing} {at(_choose(prompt, doings[doing]))}.")


# --- judge the feeling ---------------------------------------------------------------------
def judge(rng: Random) -> tuple[str, str]:
    """A review, or the last sentences of a story; the label follows the corpora's rule."""
    if rng.random() < 0.5:
        label = rng.random() < 0.5
        text = _reviews.review(rng, 1 if label else -1)
        ask = rng.choice(("Is this review positive or negative?", "Did the writer like it? Answer positive or negative."))
        return f"{ask} {text}", "Positive." if label else "Negative."
    while True:
        story = _stories.tell(rng)
        closing = " ".join(story.closing)
        if len(closing) <= 160:
            break
    ask, happily, sadly = rng.choice((("Is this story ending happy or sad?", "Happy.", "Sad."),
                                     ("Does this story end happily or sadly?", "Happily.", "Sadly.")))
    return f"{ask} {closing}", happily if story.ending == "happy" else sadly


def opposite(rng: Random) -> tuple[str, str]:
    """A sentence with one feeling word, and the same sentence with its opposite."""
    name, he = _name(rng)
    place_ = at(rng.choice(_PLACE_NAMES))
    way = rng.random()
    if way < 0.3:
        good, bad = rng.choice(FEELING_ANTONYMS)
        happy, sad = (f"{name} was {w} {place_}." for w in (good, bad))
    elif way < 0.55:
        good, bad = rng.choice(THING_ANTONYMS)
        happy, sad = (f"It was {a(w)} day {place_}." for w in (good, bad))
    elif way < 0.75:
        good, bad = rng.choice(THING_ANTONYMS)
        noun = rng.choice(THINGS)[0]
        happy, sad = (f"The {noun} was {w}." for w in (good, bad))
    else:
        good, bad = rng.choice(VERB_ANTONYMS)
        tail = f"the {_thing(rng)[0]}" if good == "loved" else "all the way home"
        happy, sad = (f"{name} {w} {tail}." for w in (good, bad))
    if rng.random() < 0.5:
        given, wanted, asked = happy, sad, "sad"
    else:
        given, wanted, asked = sad, happy, "happy"
    ask = rng.choice((f"Make this sentence {asked}:", "Say the opposite:", "Rewrite this with the opposite feeling:"))
    return f"{ask} {given}", wanted


# --- a or an -------------------------------------------------------------------------------
def article(rng: Random) -> tuple[str, str]:
    way = rng.random()
    if way < 0.4:
        phrase = _thing(rng)[0]
    elif way < 0.7:
        noun, adjectives = rng.choice(FOODS)
        phrase = f"{rng.choice(adjectives)} {noun}" if rng.random() < 0.6 else noun
    else:
        phrase = rng.choice(ANIMALS)
        if rng.random() < 0.5:
            phrase = f"{rng.choice(('old', 'little', 'orange', 'big', 'eager', 'young', 'tiny'))} {phrase}"
    ask = rng.choice(("Write a or an before: {p}", "Which goes before \"{p}\", a or an?"))
    return ask.format(p=phrase), cap(f"{a(phrase)}.")


TASKS = (ending, question, color, count, place, judge, opposite, article)


def generate(rng: Random, count_: int = COUNT) -> list[dict]:
    records, seen = [], set()  # `seen` is only asked, never iterated
    while len(records) < count_:
        prompt, response = rng.choice(TASKS)(rng)
        if prompt not in seen:
            seen.add(prompt)
            records.append({"prompt": prompt, "response": response})
    return records
