"""The built-in corpora: sizes, determinism, grammar, diversity, and the labels' rule.

`verdict` below is the rule of docs/builtin-data.md, written again from the doc rather than
imported, so the generators and the rule are checked against each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from random import Random

import pytest

from lmspec.runtime.data import builtin
from lmspec.runtime.data.builtin import _stories
from lmspec.runtime.data.builtin._words import NEGATIVE, NEGATORS, POSITIVE, a

POS, NEG = frozenset(POSITIVE), frozenset(NEGATIVE)

# sha256 of each seed-0 corpus (see `digest`), by VERSION. A change to the generated text
# fails here: bump builtin.VERSION (it keys the data caches) and pin the new digests.
PINNED = {
    1: {
        "tiny-stories": "c6231c9d9bc048cb915b58b3467a7cf0ac080ddb5ba3e74dd97881f232b9104d",
        "tiny-reviews": "2cbefb39afc79b1a09da4e90748efbed5e64e21606f9623dc31375d7380fcddf",
        "tiny-instructions": "b92d7f939f89f23239261bbc3190dfab5d51344bcc88d0c5febfd7f9e30c148d",
    },
}


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[dict]]:
    return {name: builtin.generate(name) for name in builtin.NAMES}


@pytest.fixture(scope="module")
def stories(corpora):
    return corpora["tiny-stories"]


@pytest.fixture(scope="module")
def reviews(corpora):
    return corpora["tiny-reviews"]


@pytest.fixture(scope="module")
def instructions(corpora):
    return corpora["tiny-instructions"]


@pytest.fixture(scope="module")
def told() -> list[_stories.Told]:
    """Stories with their parts and characters, for the checks that need to know which
    sentences are the ending and who the pronouns can be about."""
    rng = Random(0)
    return [_stories.tell(rng) for _ in range(3000)]


def digest(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


_TOKEN = re.compile(r"[a-z']+|[.!?,;]")


def verdict(text: str) -> int | None:
    """Split into clauses at . ! ? , ; and "but"; in a clause a negator (not, never, no, or a
    word ending in n't) reverses the next sentiment word; the last sentiment word decides."""
    last, negated = None, False
    for token in _TOKEN.findall(text.lower()):
        if token in ".!?,;" or token == "but":
            negated = False  # a new clause
        elif token in NEGATORS or token.endswith("n't"):
            negated = True
        elif token in POS or token in NEG:
            last, negated = int((token in POS) != negated), False
    return last


# --- the API -------------------------------------------------------------------------------


def test_names_fields_and_record_types(corpora):
    assert builtin.NAMES == ("tiny-stories", "tiny-reviews", "tiny-instructions")
    assert isinstance(builtin.VERSION, int)
    assert builtin.fields("tiny-stories") == ("text", "ending")
    assert builtin.fields("tiny-reviews") == ("text", "sentiment")
    assert builtin.fields("tiny-instructions") == ("prompt", "response")
    for name, records in corpora.items():
        assert all(tuple(r) == builtin.fields(name) for r in records), name
    assert {r["ending"] for r in corpora["tiny-stories"]} == {"happy", "sad"}
    assert {r["sentiment"] for r in corpora["tiny-reviews"]} == {0, 1}
    assert all(isinstance(v, str) and v.strip() for r in corpora["tiny-instructions"] for v in r.values())


def test_an_unknown_name_lists_the_names():
    for call in (lambda: builtin.generate("tiny-storie"), lambda: builtin.fields("tiny-storie")):
        with pytest.raises(ValueError) as e:
            call()
        assert "'tiny-storie'" in str(e.value) and all(name in str(e.value) for name in builtin.NAMES)
    with pytest.raises(TypeError):
        builtin.generate("tiny-reviews", seed="0")


def test_sizes(stories, reviews, instructions):
    assert len(stories) >= 20_000
    assert len(reviews) >= 10_000
    assert sum(r["sentiment"] for r in reviews) * 2 == len(reviews)  # balanced exactly
    assert len(instructions) >= 5_000


# Loads the package from its folder alone, without lmspec or its dependencies: this also
# checks that the corpora need nothing but the standard library.
FRESH = """
import hashlib, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("builtin", sys.argv[1] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[1]])
builtin = importlib.util.module_from_spec(spec)
sys.modules["builtin"] = builtin
spec.loader.exec_module(builtin)
assert not {"torch", "numpy", "lmspec"} & set(sys.modules)
print(json.dumps({n: hashlib.sha256(json.dumps(builtin.generate(n), sort_keys=True).encode()).hexdigest()
                  for n in builtin.NAMES}))
"""


def test_the_same_seed_gives_the_same_corpus_in_a_fresh_interpreter(corpora):
    # Another process with another hash seed: nothing may depend on set order or hash().
    folder = os.path.dirname(builtin.__file__)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", FRESH, folder], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {name: digest(records) for name, records in corpora.items()}


def test_the_text_is_pinned_to_the_version(corpora):
    now = {name: digest(records) for name, records in corpora.items()}
    assert now == PINNED.get(builtin.VERSION), (
        f"the generated text changed: bump builtin.VERSION and pin its digests in PINNED: {now}")


def test_the_doc_examples_are_real_records(corpora):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "builtin-data.md").read_text()
    examples = [json.loads(line) for block in re.findall(r"```json\n(.*?)```", doc, re.S)
                for line in block.splitlines()]
    assert len(examples) >= 10
    for example in examples:
        name = next(n for n in builtin.NAMES if tuple(example) == builtin.fields(n))
        assert example in corpora[name], example


def test_another_seed_gives_another_corpus(corpora):
    for name in ("tiny-reviews", "tiny-instructions"):
        other = builtin.generate(name, seed=1)
        assert other != corpora[name] and len(other) == len(corpora[name])
    other = builtin.generate("tiny-stories", seed=1)
    assert len({r["text"] for r in other} & {r["text"] for r in corpora["tiny-stories"]}) < 100


# --- everything ----------------------------------------------------------------------------


def all_text(corpora) -> str:
    return " ".join(v for records in corpora.values() for r in records for v in r.values() if isinstance(v, str))


def test_ascii_only(corpora):
    assert all_text(corpora).isascii()


def test_a_and_an_are_right(corpora):
    text = all_text(corpora).replace("a or an", "")  # the article task names both
    assert re.findall(r"\b[Aa] [aeiouAEIOU]\w*", text) == []
    assert re.findall(r"\b[Aa]n [^aeiouAEIOU\W]\w*", text) == []
    assert a("owl") == "an owl" and a("orange kite") == "an orange kite" and a("red apple") == "a red apple"


# --- tiny-stories --------------------------------------------------------------------------


def test_about_half_the_stories_end_happily(stories):
    assert 0.45 <= sum(r["ending"] == "happy" for r in stories) / len(stories) <= 0.55


def test_stories_are_short_and_share_a_shape(stories):
    lengths = [len(r["text"]) for r in stories]
    assert 250 <= min(lengths) and max(lengths) <= 700
    assert all(3 <= _stories.count_sentences(r["text"]) <= 8 for r in stories)
    openings = Counter(r["text"].split(",")[0] for r in stories)
    assert openings["Once upon a time"] > len(stories) / 3  # recurring structure to learn
    assert sum("One day," in r["text"] or "In the end," in r["text"] for r in stories) > len(stories) / 2


def test_stories_are_varied(stories):
    texts = [r["text"] for r in stories]
    assert len(set(texts)) == len(texts)
    assert len({re.split(r"(?<=[.!?]) ", t)[0] for t in texts}) > 15_000  # first sentences
    grams = [tuple(w[i:i + 8]) for t in texts[:2000] for w in [t.split()] for i in range(len(w) - 7)]
    assert len(set(grams)) > 0.5 * len(grams)  # most 8-word runs are new


def test_the_body_is_neutral_and_the_ending_carries_the_feeling(told):
    for story in told:
        assert not set(words(" ".join(story.body))) & (POS | NEG), story.text
        ending = set(words(" ".join(story.closing)))
        feeling, other = (POS, NEG) if story.ending == "happy" else (NEG, POS)
        assert ending & feeling and not ending & other, story.text


def test_the_reviews_rule_reads_every_story_ending(stories):
    # What lets a sentiment classifier trained on tiny-reviews judge tiny-stories.
    assert all(verdict(r["text"]) == (r["ending"] == "happy") for r in stories)


def test_ending_words_are_review_words(stories, reviews):
    def used(records, key, value, lexicon):
        return {w for r in records if r[key] == value for w in words(r["text"])} & lexicon

    shared_good = used(stories, "ending", "happy", POS) & used(reviews, "sentiment", 1, POS)
    shared_bad = used(stories, "ending", "sad", NEG) & used(reviews, "sentiment", 0, NEG)
    assert {"happy", "glad", "wonderful", "great", "loved", "smiled"} <= shared_good
    assert {"sad", "terrible", "awful", "lost", "cried", "hated"} <= shared_bad


def test_pronouns_agree_with_the_characters(told):
    for story in told:
        text = re.sub(r'"[^"]*"', "", story.text)  # what characters say is theirs
        used = set(words(text))
        present = {story.hero.pronoun, story.friend.pronoun}
        if "he" not in present:
            assert not used & {"he", "him", "his", "himself"}, story.text
        if "she" not in present:
            assert not used & {"she", "her", "herself"}, story.text
        assert not re.search(r"\b(they|we) was\b|\b(he|she|it) were\b", story.text, re.I), story.text
    pairs = [s for s in told if s.hero.kind == "pair"]
    assert len(pairs) > 100 and not any(f"{s.hero.ref} was" in s.text for s in pairs)


def test_stories_are_told_in_the_past_tense(told):
    present = {"is", "are", "am", "has", "goes", "finds", "likes", "wants", "sees", "says", "lives",
               "looks", "comes", "gets", "does", "will", "can"}
    for story in told:
        narration = re.sub(r'"[^"]*"', "", story.text)  # dialogue may be in the present
        assert not set(words(narration)) & present, story.text


# --- tiny-reviews --------------------------------------------------------------------------


def test_every_review_follows_the_rule(reviews):
    assert [verdict(r["text"]) for r in reviews] == [r["sentiment"] for r in reviews]


def test_counting_sentiment_words_is_not_enough(reviews):
    def count_words(text: str, tie: int) -> int:
        score = sum((w in POS) - (w in NEG) for w in words(text))
        return 1 if score > 0 else 0 if score < 0 else tie

    for tie in (0, 1):
        accuracy = sum(count_words(r["text"], tie) == r["sentiment"] for r in reviews) / len(reviews)
        assert accuracy < 0.8, accuracy
    texts = [r["text"] for r in reviews]
    assert sum("not bad at all" in t for t in texts) > 50
    assert sum(", but " in t for t in texts) > 1000
    assert sum(t.startswith("At first") or " At first" in t for t in texts) > 100


def test_reviews_are_short_and_distinct(reviews):
    texts = [r["text"] for r in reviews]
    assert len(set(texts)) == len(texts)
    assert max(map(len, texts)) <= 120  # one 128-token window of bytes holds any review
    assert all(1 <= _stories.count_sentences(t) <= 4 for t in texts)


# --- tiny-instructions ---------------------------------------------------------------------


def test_the_same_prompt_always_gets_the_same_response(instructions):
    answers = {}
    for seed, records in ((0, instructions), (1, builtin.generate("tiny-instructions", seed=1))):
        for r in records:
            answers.setdefault(r["prompt"], set()).add(r["response"])
    assert len(answers) < 2 * len(instructions) - 100  # the seeds share prompts, so this is a test
    assert all(len(responses) == 1 for responses in answers.values())
    assert len({r["prompt"] for r in instructions}) == len(instructions)


def test_every_task_kind_is_there(instructions):
    kinds = Counter()
    for r in instructions:
        p = r["prompt"]
        kind = ("ending" if "ending" in p and "Write" in p or "Finish" in p else
                "question" if re.match(r"(.*\. )?(What did|Where did|Who) ", p) else
                "color" if "What color" in p else "count" if "How many" in p else
                "place" if "Name a place" in p or p.startswith("Where could") else
                "judge" if "review" in p or "story end" in p else
                "article" if "a or an" in p else "opposite")
        kinds[kind] += 1
    assert len(kinds) == 8 and min(kinds.values()) > 400, kinds


def test_answers_come_from_the_prompt(instructions):
    for r in instructions:
        p, answer = r["prompt"], r["response"]
        if re.search(r"(What did|Who) \w+", p) and "color" not in p:
            assert answer[:-1] in p, r  # "Lily found a key." copies a fact
        elif "How many" in p and "more" not in p:
            assert answer[:-1] in p, r
        elif "How many" in p:  # "... had two apples. Tom gave her three more."
            numbers = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
            had, gave, total = (numbers.index(w) + 1 for w in words(p + " " + answer) if w in numbers)
            assert had + gave == total, r
        elif "a or an" in p:
            found = re.search(r'before: (.+)$|"(.+)"', p)
            phrase = found.group(1) or found.group(2)
            assert answer == a(phrase)[0].upper() + a(phrase)[1:] + ".", r
        elif p.startswith(("Is this review", "Did the writer")):
            assert answer == ("Positive." if verdict(p.split("? ", 1)[1]) else "Negative."), r
        elif p.startswith(("Is this story ending", "Does this story end")):
            assert answer in (("Happy.", "Happily.") if verdict(p.split("? ", 1)[1]) else ("Sad.", "Sadly.")), r
        elif "ending for a story" in p or "with a happy ending" in p or "with a sad ending" in p:
            assert verdict(answer) == ("happy" in p), r


def test_opposites_change_one_feeling(instructions):
    pairs = 0
    for r in instructions:
        if r["prompt"].startswith(("Make this sentence", "Say the opposite", "Rewrite this")):
            given = r["prompt"].split(": ", 1)[1]
            changed = [(x, y) for x, y in zip(given.split(), r["response"].split()) if x != y]
            assert 1 <= len(changed) <= 2 and verdict(given) != verdict(r["response"]), r
            pairs += 1
    assert pairs > 400
