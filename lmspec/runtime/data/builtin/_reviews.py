"""tiny-reviews: one- to four-sentence reviews of things from the stories' world, labelled 0/1.

Every review follows one rule, so its label can be read off its words (the test checks it on
every review): split the text into clauses at . ! ? , ; and "but"; inside a clause a negator
(not, never, no, or a word ending in n't) reverses the next sentiment word; the label is the
polarity of the last sentiment word. The forms are chosen so that counting positive against
negative words is not enough: a verdict may come after a "but" that overrules what came before,
as a negated word of the other polarity ("not bad at all"), or after a change of mind ("At
first ... In the end ..."). Neutral sentences (who it was for, where it was bought) hold no
sentiment word and no negator in front of one.
"""

from __future__ import annotations

from random import Random

from ._words import a, cap

COUNT = 10_000  # half positive, half negative, exactly
MAX_CHARS = 120  # every review fits a 128-token byte-level context

# (noun phrase, category): what can be reviewed.
SUBJECTS = tuple(
    [(n, "toy") for n in ("kite", "ball", "toy train", "teddy bear", "drum", "doll", "puzzle",
                          "yo-yo", "robot", "wagon", "puppet", "board game", "jump rope",
                          "toy boat", "kite for kids", "rocking horse")]
    + [(n, "book") for n in ("book", "story book", "picture book", "book about owls",
                             "book of poems", "comic", "bedtime story", "book about boats")]
    + [(n, "food") for n in ("cake", "apple pie", "bread", "muffin", "soup", "sandwich",
                             "cookie", "lemon tart", "honey cake", "plum jam", "pancake")]
    + [(n, "place") for n in ("park", "zoo", "beach", "bakery", "library", "museum", "farm",
                              "market", "playground", "camp", "castle", "garden", "harbor")]
    + [(n, "event") for n in ("boat ride", "puppet show", "school play", "fair", "picnic",
                              "trip to the zoo", "pony ride", "concert", "magic show",
                              "train ride", "birthday party")]
    + [(n, "wear") for n in ("hat", "scarf", "umbrella", "coat", "backpack", "raincoat")]
)
ADJECTIVES = {  # for the things that come in kinds: "this red kite"
    "toy": ("red", "blue", "green", "little", "big", "new", "old", "wooden", "yellow", "pink"),
    "wear": ("red", "blue", "green", "new", "old", "yellow", "pink", "warm", "striped"),
}

# Each aspect with the adjectives that fit it, and whether it can decide the whole verdict
# ("..., but the ending was wonderful" can; "..., but the box was ugly" cannot).
ASPECTS = {
    "toy": (("the box", ("lovely", "nice", "great"), ("ugly", "awful", "bad"), False),
            ("the color", ("lovely", "great", "beautiful"), ("ugly", "dull", "awful"), False),
            ("the price", ("good", "great"), ("awful", "bad", "terrible"), False),
            ("the paint", ("lovely", "perfect", "nice"), ("ugly", "awful", "bad"), False),
            ("playing with it", ("great", "fun", "wonderful"), ("boring", "dull", "awful"), True)),
    "book": (("the start", ("great", "fun", "wonderful"), ("dull", "boring", "slow and dull"), False),
             ("the cover", ("lovely", "beautiful", "nice"), ("ugly", "dull", "awful"), False),
             ("the ending", ("wonderful", "perfect", "lovely"), ("awful", "boring", "terrible"), True),
             ("the story", ("great", "wonderful", "fun"), ("boring", "dull", "terrible"), True)),
    "food": (("the smell", ("wonderful", "lovely", "great"), ("awful", "terrible", "bad"), False),
             ("the price", ("good", "great"), ("awful", "bad", "terrible"), False),
             ("the taste", ("wonderful", "great", "perfect"), ("awful", "terrible", "horrible"), True),
             ("every bite", ("great", "lovely", "amazing"), ("awful", "bad", "horrible"), True)),
    "place": (("the walk there", ("lovely", "nice", "fun"), ("boring", "awful", "dull"), False),
              ("the line at the door", ("nice and short", "good"), ("awful", "terrible"), False),
              ("the food there", ("great", "good", "lovely"), ("awful", "bad", "terrible"), False),
              ("the view", ("wonderful", "beautiful", "amazing"), ("dull", "ugly", "awful"), True),
              ("the whole visit", ("wonderful", "great", "fun"), ("awful", "boring", "terrible"), True)),
    "event": (("the start", ("great", "fun", "wonderful"), ("dull", "boring", "slow and dull"), False),
              ("the weather", ("lovely", "perfect", "nice"), ("awful", "terrible", "bad"), False),
              ("the ending", ("wonderful", "perfect", "great"), ("awful", "boring", "terrible"), True),
              ("the rest of it", ("lovely", "great", "wonderful"), ("awful", "dull", "horrible"), True)),
    "wear": (("the color", ("lovely", "great", "beautiful"), ("ugly", "dull", "awful"), False),
             ("the price", ("good", "great"), ("awful", "bad", "terrible"), False),
             ("the box it came in", ("nice", "lovely"), ("ugly", "awful"), False),
             ("wearing it", ("great", "lovely", "wonderful"), ("awful", "horrible", "terrible"), True)),
}
# Words for the whole thing, by category: nobody calls a cake boring or a party ugly.
_GOOD = ("great", "wonderful", "lovely", "perfect", "amazing", "nice", "good", "fantastic", "excellent")
_BAD = ("awful", "terrible", "bad", "horrible")
VERDICT_ADJECTIVES = {
    "toy": {1: _GOOD + ("fun", "beautiful"), -1: _BAD + ("boring", "dull", "ugly")},
    "book": {1: _GOOD + ("fun", "beautiful"), -1: _BAD + ("boring", "dull")},
    "food": {1: _GOOD, -1: _BAD},
    "place": {1: _GOOD + ("fun", "beautiful"), -1: _BAD + ("boring", "dull", "ugly")},
    "event": {1: _GOOD + ("fun",), -1: _BAD + ("boring", "dull")},
    "wear": {1: _GOOD + ("beautiful",), -1: _BAD + ("ugly",)},
}
# How the reviewer's family took it: a clause with one sentiment word of that polarity.
FEELINGS = {
    1: ("I loved it", "we loved it", "my son loved it", "my daughter smiled all day",
        "the kids laughed a lot", "we were so happy with it", "I was glad we went",
        "we had a great time", "my kids enjoyed every minute", "it made me smile",
        "my little girl smiled", "my son was so proud of it", "we all cheered"),
    -1: ("I hated it", "my son cried", "my daughter was sad all day", "we were upset",
         "it made me angry", "the kids were bored", "I was disappointed", "we had an awful time",
         "my little boy cried", "my kids were bored", "my son was upset",
         "my son lost interest in a day", "we lost a whole afternoon",
         "my daughter was scared"),
}
# The same verdict said by negating a word of the other polarity.
NEGATED = {
    1: ("it was not bad at all", "it was never boring", "my son never cried once",
        "my kids were never bored", "it was not dull for a minute", "I did not hate it",
        "it wasn't bad at all", "it was not awful at all", "my daughter didn't get bored once",
        "we were not disappointed", "it was not boring for a second"),
    -1: ("I did not love it", "my son did not smile once", "we were not happy with it",
         "it was not fun at all", "it was not as good as I hoped", "we didn't have a good time",
         "I wasn't glad we went", "it was not great", "it wasn't nice at all",
         "it was no fun at all", "it was not good"),
}
# Sentences with no sentiment word, before or after the verdict.
CONTEXT = {
    "toy": ("I got it for my son.", "We bought it at the market.", "It came in a small box.",
            "My daughter is six.", "It was a present for my niece."),
    "book": ("I read it to my kids at night.", "We got it from the library.",
             "My son read it in one day.", "It has a lot of pictures."),
    "food": ("We got it at the bakery.", "I had it for lunch.", "We shared it after dinner.",
             "It was still warm."),
    "place": ("We went there on Sunday.", "We took the bus there.", "We went with the whole family.",
              "It is next to the school."),
    "event": ("We went last week.", "It was on a Saturday.", "We took the kids.",
              "It took about two hours."),
    "wear": ("I got it for the winter.", "It was a present.", "I wear it to work.",
             "We bought it at the market."),
}
# Sentences after the verdict that repeat it without a sentiment word.
_BUY = {1: ("I would buy it again.", "Five stars.", "Thank you!", "We want another one."),
        -1: ("I would not buy it again.", "One star.", "Do not buy it.", "Never again.")}
_VISIT = {1: ("We will go back.", "Five stars.", "Thank you!", "We will go again next year."),
          -1: ("We will not go back.", "One star.", "Never again.", "Do not go.")}
CLOSING = {"toy": _BUY, "book": _BUY, "food": _BUY, "wear": _BUY, "place": _VISIT, "event": _VISIT}
TURNS = (("At first", "In the end"), ("At first", "After a while"),
         ("On the first day", "By the end of the week"), ("The first time", "The second time"))


def review(rng: Random, polarity: int) -> str:
    """One review whose verdict is `polarity` (+1 positive, -1 negative)."""
    noun, category = rng.choice(SUBJECTS)
    if category in ADJECTIVES and rng.random() < 0.4:
        noun = f"{rng.choice(ADJECTIVES[category])} {noun}"
    the = rng.choice(("this", "the", "our")) if category in ADJECTIVES else rng.choice(("this", "the"))
    subject = f"{the} {noun}"
    words = VERDICT_ADJECTIVES[category]
    sentences = []
    if rng.random() < 0.35:
        sentences.append(rng.choice(CONTEXT[category]))

    form = rng.random()
    if form < 0.5:  # plain: the verdict's words alone say it
        sentences.append(_plain(rng, polarity, subject, noun, category))
    elif form < 0.65:  # a negated word of the other polarity
        sentences.append(cap(rng.choice(NEGATED[polarity])) + ".")
    elif form < 0.88:  # something said against the verdict, then "but" and the verdict
        sentences.append(cap(_contrast(rng, polarity, category)) + ".")
    else:  # a change of mind across two sentences
        first, then = rng.choice(TURNS)
        before = (f"{subject} was {rng.choice(words[-polarity])}" if rng.random() < 0.5
                  else rng.choice(FEELINGS[-polarity]))
        sentences.append(f"{first}, {before}.")
        sentences.append(f"{then}, {_verdict(rng, polarity, category, negate=0.3)}.")
    if rng.random() < 0.3:
        sentences.append(rng.choice(CLOSING[category][polarity]))
    return " ".join(sentences)


def _plain(rng, polarity, subject, noun, category) -> str:
    words = VERDICT_ADJECTIVES[category][polarity]
    # Things still around are reviewed in the present; visits and events in the past.
    be = "was" if category == "event" or rng.random() < 0.5 else "is"
    way = rng.random()
    if way < 0.3:
        return cap(f"{subject} {be} {rng.choice(words)}.")
    if way < 0.55:
        return cap(rng.choice(FEELINGS[polarity])) + "."
    if way < 0.75:
        return f"What {a(rng.choice(words))} {noun}!"
    if way < 0.9:
        return f"It {be} {a(rng.choice(words))} {noun}."
    aspect, good, bad, _ = rng.choice(ASPECTS[category])
    return cap(f"{aspect} was {rng.choice(good if polarity > 0 else bad)}.")


def _verdict(rng, polarity, category, negate=0.0, aspect=None) -> str:
    """A clause that decides: 'it was great', a feeling, a negation, or `aspect`'s clause."""
    way = rng.random()
    if way < negate:
        return rng.choice(NEGATED[polarity])
    if aspect and way < negate + 0.3:
        name, good, bad, _ = aspect
        return f"{name} was {rng.choice(good if polarity > 0 else bad)}"
    if rng.random() < 0.5:
        return f"it was {rng.choice(VERDICT_ADJECTIVES[category][polarity])}"
    return rng.choice(FEELINGS[polarity])


def _contrast(rng, polarity, category) -> str:
    """'<against>, but <verdict>': what comes before "but" is overruled. Sometimes two
    clauses stand against one, so counting words picks the wrong side."""
    aspects = list(ASPECTS[category])
    rng.shuffle(aspects)
    minor = [x for x in aspects if not x[3]]
    deciding = next(x for x in aspects if x[3])
    (aspect, good, bad, _), (aspect2, good2, bad2, _) = minor[0], (minor + aspects)[1]
    against = f"{aspect} was {rng.choice(bad if polarity > 0 else good)}"
    way = rng.random()
    if way < 0.4:
        against += f" and {aspect2} was {rng.choice(bad2 if polarity > 0 else good2)}"
    elif way < 0.6:
        against = rng.choice(("I wanted to love it", "I expected to love it") if polarity < 0
                       else ("I thought I would hate it", "I expected it to be boring"))
    return f"{against}, but {_verdict(rng, polarity, category, negate=0.35, aspect=deciding)}"


def generate(rng: Random, count: int = COUNT) -> list[dict]:
    labels = [1, 0] * (count // 2)
    rng.shuffle(labels)
    records, seen = [], set()  # `seen` is only asked, never iterated
    for label in labels:
        while True:
            text = review(rng, 1 if label else -1)
            if len(text) <= MAX_CHARS and text not in seen:
                break
        seen.add(text)
        records.append({"text": text, "sentiment": label})
    return records
