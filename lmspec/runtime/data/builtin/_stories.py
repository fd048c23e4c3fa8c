"""tiny-stories: short stories from a small grammar of characters, places, things and plots.

A story is an opening, perhaps a sentence about the hero, then a plot: a setup, a problem, a
few attempts, and an ending that either solves the problem (happy) or does not (sad), closed by
one or two sentences of feeling. Everything before the ending is drawn before the ending is
chosen and holds no sentiment word, so the body says nothing about how the story ends; the
ending says it with the words of tiny-reviews' verdicts. The templates are in `_plots.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from random import Random

from ._plots import ABOUT_HERO, FEELINGS, FINALS, OPENERS, PLOTS
from ._words import (
    ANIMAL_ACTIVITIES, FOODS, HOMES, PERSON_ACTIVITIES, PLACES, THINGS, TRAITS, Character, a, at,
    cap, character, names_in,
)

COUNT = 20_000
MIN_CHARS, MAX_CHARS = 250, 700
MAX_SENTENCES = 8


@dataclass(frozen=True)
class Told:
    body: list[str]  # sentences before the ending: no sentiment word
    closing: list[str]  # the ending: how the plot resolves, then the feeling
    ending: str  # "happy" | "sad"
    hero: Character
    friend: Character  # a second character, who may or may not appear

    @property
    def text(self) -> str:
        return " ".join(self.body + self.closing)


_THINGS_BY_TAG = {tag: tuple((noun, adjs) for noun, adjs, tags in THINGS if tag in tags)
                  for tag in ("keep", "high", "wear")}
_THINGS_BY_TAG["food"] = FOODS
_THINGS_BY_TAG["baked"] = tuple(food for food in FOODS if food[0] in ("cake", "pie", "loaf of bread", "muffin", "tart"))
_ALL_PLACES = tuple(place for place, _ in PLACES)


def tell(rng: Random) -> Told:
    """One story."""
    plot = rng.choice(PLOTS)
    hero = character(rng, rng.choice(plot.heroes))
    friend = character(rng, "person" if rng.random() < 0.6 else "animal", avoid=names_in(hero))
    while friend.ref == hero.ref:  # "the owl" and "the owl"
        friend = character(rng, "animal", avoid=names_in(hero))
    fields = {**hero.slots(), **friend.slots("f_")}
    place = rng.choice(plot.places or _ALL_PLACES)
    activities = ANIMAL_ACTIVITIES if hero.kind == "animal" else PERSON_ACTIVITIES
    act, act_past, act_ing = rng.choice(activities)
    trait, trait2 = _two(rng, TRAITS)
    fields.update(
        hero=hero.intro, home=rng.choice(HOMES), place=f"the {place}", place_noun=place,
        at_place=at(place), act=act, act_past=act_past, act_ing=act_ing, trait=trait,
        trait2=trait2, racers="the animals" if hero.kind == "animal" else "the children",
    )
    if plot.things:
        noun, adjectives = rng.choice(_THINGS_BY_TAG[plot.things])
        thing = f"{rng.choice(adjectives)} {noun}" if rng.random() < 0.8 else noun
        fields.update(thing=thing, a_thing=a(thing), noun=noun)

    body = [rng.choice(OPENERS)]
    if rng.random() < 0.6:
        body.append(rng.choice(ABOUT_HERO))
    body += [rng.choice(plot.setup), rng.choice(plot.problem)]
    tries = rng.random()
    body += _two(rng, plot.attempt) if tries < 0.25 else [rng.choice(plot.attempt)] if tries < 0.75 else []
    # The ending is drawn only now, after the body: the body cannot depend on it.
    ending = "happy" if rng.random() < 0.5 else "sad"
    closing = [rng.choice(plot.happy if ending == "happy" else plot.sad)]
    feeling = rng.random()
    if feeling < 0.7:
        closing.append(rng.choice(FEELINGS[ending]))
    if feeling > 0.4:
        closing.append(rng.choice(FINALS[ending]))

    sentences = _render(body + closing, fields, friend)
    return Told(sentences[:len(body)], sentences[len(body):], ending, hero, friend)


def _two(rng: Random, options: tuple[str, ...]) -> list[str]:
    """Two different options, in a random order."""
    i = int(rng.random() * len(options))
    j = int(rng.random() * (len(options) - 1))
    return [options[i], options[j + (j >= i)]]


def _render(templates: list[str], fields: dict[str, str], friend: Character) -> list[str]:
    """Format each template; the friend's first {f} is its intro, every later one its name."""
    out, introduced = [], False
    for template in templates:
        if "{f}" in template:
            fields["f"] = friend.ref if introduced else friend.intro
            introduced = True
        out.append(cap(template.format_map(fields)))
    return out


_QUOTED = re.compile(r'"[^"]*"')
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def count_sentences(text: str) -> int:
    """Sentences outside quotes: '"Where can it be?" she asked.' is one."""
    return len(_SENTENCE_END.findall(_QUOTED.sub("Q", text)))


def generate(rng: Random, count: int = COUNT) -> list[dict]:
    records, seen = [], set()  # `seen` is only asked, never iterated: order stays the seed's
    while len(records) < count:
        story = tell(rng)
        text = story.text
        if MIN_CHARS <= len(text) <= MAX_CHARS and text not in seen and count_sentences(text) <= MAX_SENTENCES:
            seen.add(text)
            records.append({"text": text, "ending": story.ending})
    return records
