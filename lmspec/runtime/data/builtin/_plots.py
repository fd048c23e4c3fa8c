"""The templates of tiny-stories: openings, sentences about the hero, plots, closing feelings.

Fields are filled in by `_stories.tell`: {name} {he} {him} {his} {himself} {was} {I} {me} {my}
for the hero, the same with "f_" for a second character, whose first mention is {f} (its intro,
"a boy named Ben", then "Ben"), {a_thing} {thing} {noun} for an object, {place} {at_place}
{place_noun} for where it happens. A sentence may start with a lower-case field ("{he} ran"):
it is capitalised after formatting.

No template before an ending holds a word of the sentiment lexicon; each closing feeling holds
one and no negator, so the last sentiment word of a story always says how it ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._words import OUTDOORS, WATERSIDE


@dataclass(frozen=True)
class Plot:
    heroes: tuple[str, ...]  # the kinds of hero it suits: "person", "animal", "pair"
    things: str | None  # a tag of THINGS, "food", "baked", or None for no object
    places: tuple[str, ...] | None  # where it can happen; None: any place
    setup: tuple[str, ...]
    problem: tuple[str, ...]
    attempt: tuple[str, ...]
    happy: tuple[str, ...]
    sad: tuple[str, ...]


OPENERS = (
    "Once upon a time, there {was} {hero}.",
    "Once upon a time, there {was} {hero} who lived {home}.",
    "Once upon a time, in a small village, there lived {hero}.",
    "There once {was} {hero} who lived {home}.",
    "Once upon a time, {hero} lived in a little house {home}.",
    "Long ago, in a land far away, there lived {hero}.",
    "Once upon a time, {hero} lived {home}.",
    "Long ago, there {was} {hero}.",
)
ABOUT_HERO = (
    "{he} liked to {act}.",
    "Every day, {name} {act_past}.",
    "{name} {was} {trait} and {trait2}.",
    "{name} spent most afternoons {act_ing}.",
    "Each morning, {he} {act_past} before breakfast.",
    "More than anything, {name} liked {act_ing}.",
    "{name} {was} very {trait}, and {he} often {act_past}.",
)

# The closing feeling: how the hero felt, then how the day was, or one of the two. Each holds
# a sentiment word and no negator, so the last sentiment word of every story is one of these
# and says how it ended (the rule in docs/builtin-data.md).
FEELINGS = {
    "happy": (
        "{name} {was} very happy.", "{he} smiled all the way home.", "{name} felt glad and proud.",
        "{he} laughed and danced around.", "{name} {was} so glad.", "{he} loved every minute of it.",
        "{name} smiled from ear to ear.", "{name} felt happy and warm inside.",
    ),
    "sad": (
        "{name} {was} very sad.", "{he} cried all the way home.", "{name} felt awful.",
        "{name} {was} sad and lonely.", "{he} felt upset for a long time.",
        "{name} sat down and cried.", "{he} hated every minute of it.", "{name} felt angry and sad.",
    ),
}
FINALS = {
    "happy": (
        "It was a wonderful day.", "It was the best day ever.", "Everyone had a great time.",
        "That night, {he} went to bed with a big smile.", "It was a happy day for everyone.",
        "{name} had a lovely day.", "It was a perfect day.",
    ),
    "sad": (
        "It was a terrible day.", "It was the worst day ever.", "Everything was ruined.",
        "That night, {he} cried in bed.", "It was a sad day for everyone.", "It was an awful day.",
        "{name} hated that day.",
    ),
}

PLOTS = (
    Plot(  # a lost thing
        heroes=("person", "animal", "pair"), things="keep", places=None,
        setup=(
            "One day, {name} found {a_thing} {at_place}.",
            "One morning, {name} took {his} {thing} to {place}.",
            "One sunny afternoon, {name} went to {place} with {his} {thing}.",
            "One day, {name} got {a_thing} from {his} grandmother and took it to {place}.",
        ),
        problem=(
            "Then {he} put the {noun} down to look at a bird, and when {he} turned around, it was gone.",
            "On the way home, {he} dropped the {noun} and did not notice.",
            "Then a big gust of wind came, and the {noun} was gone.",
            "After lunch, {he} looked for the {noun}, but it was not there.",
        ),
        attempt=(
            "{name} looked under every bench and behind every tree.",
            "{he} asked {f} to help look for it.",
            '"Where can it be?" {he} asked.',
            "{he} went back to {place} and looked for a long time.",
        ),
        happy=(
            "In the end, {f} found the {noun} under a pile of leaves and gave it back.",
            "In the end, {he} found the {noun} behind a big rock.",
            "At last, {name} saw something in the grass. It was the {noun}!",
            "In the end, {name} found the {noun} right where {he} had left it.",
        ),
        sad=(
            "In the end, {he} had to go home without the {noun}.",
            "The sun went down, and the {noun} was still lost.",
            "In the end, the {noun} was lost forever.",
            "In the end, {name} never found the {noun}.",
        ),
    ),
    Plot(  # a thing stuck up high
        heroes=("person", "animal", "pair"), things="high", places=OUTDOORS,
        setup=(
            "One windy day, {name} went to {place} with {his} {thing}.",
            "One day, {name} played with {a_thing} {at_place}.",
            "One afternoon, {name} took {a_thing} to {place} to play.",
        ),
        problem=(
            "Then the wind pulled the {noun} up into a tall tree.",
            "Then {he} threw the {noun} up high, and it got stuck in a tall tree.",
            "Suddenly, the {noun} flew up and got caught on a high branch of an old tree.",
        ),
        attempt=(
            "{he} jumped and jumped, but {he} could not reach it.",
            "{name} tried to knock it down with a long stick.",
            "{he} asked {f} for help.",
            '"How can {I} get it down?" {he} asked.',
        ),
        happy=(
            "In the end, {f} brought a ladder and got the {noun} down.",
            "At last, the wind blew the {noun} back down, right into {his} hands.",
            "In the end, a tall man reached up and handed the {noun} back to {him}.",
        ),
        sad=(
            "In the end, the {noun} stayed up in the tree, and {name} had to go home without it.",
            "Then the branch broke, and the {noun} fell into a river and floated away.",
            "In the end, the wind carried the {noun} far away, and {name} never saw it again.",
        ),
    ),
    Plot(  # baking for someone
        heroes=("person", "pair"), things="baked", places=("kitchen",),
        setup=(
            "One day, {name} wanted to bake {a_thing} for {f}.",
            "One morning, {name} went to the kitchen to make {a_thing} for {f}, who had a birthday that week.",
            "One rainy day, {name} decided to bake {a_thing}.",
        ),
        problem=(
            "{he} mixed the flour, the eggs and the milk in a big bowl.",
            "But {he} could not remember how long to leave it in the oven.",
            "While it was in the oven, {he} sat down and fell asleep.",
            "Then {he} saw that there was no sugar left.",
        ),
        attempt=(
            "{he} asked {f} to help.",
            "{name} put the {noun} in the oven and waited.",
            "{he} read the recipe again, very slowly.",
        ),
        happy=(
            "In the end, the {noun} came out warm and golden, and {f} loved it.",
            "The {noun} was perfect, and {f} ate three pieces.",
            "In the end, everyone said it was the best {noun} they had ever eaten.",
        ),
        sad=(
            "In the end, the {noun} came out black and burnt, and nobody wanted to eat it.",
            "In the end, the {noun} fell on the floor and was ruined.",
            "In the end, the {noun} tasted awful, and {f} would not eat it.",
        ),
    ),
    Plot(  # a race
        heroes=("person", "animal"), things=None, places=OUTDOORS,
        setup=(
            "One day, there was a big race {at_place}, and {name} wanted to win.",
            "{name} wanted to win the race at the summer fair.",
            "Every spring, {racers} had a race {at_place}, and this year {name} wanted to run in it.",
        ),
        problem=(
            "{he} practiced every morning, but {f} was very fast too.",
            "But on the morning of the race, {he} woke up late.",
            "The other runners were big and strong.",
        ),
        attempt=(
            "When the race began, {name} ran as fast as {he} could.",
            "{he} took a deep breath and started to run.",
            '"{I} can do this," {he} said.',
        ),
        happy=(
            "In the end, {name} crossed the line first, and everyone cheered.",
            "In the end, {he} won the race and got a shiny medal.",
            "{name} did not win, but {he} ran {his} best race ever.",
        ),
        sad=(
            "Halfway there, {he} tripped over a rock and fell, and {he} came last.",
            "In the end, {name} came last, and {his} knee hurt.",
            "In the end, {he} was too tired to finish the race.",
        ),
    ),
    Plot(  # a picnic and the weather
        heroes=("person", "animal"), things=None, places=OUTDOORS + WATERSIDE,
        setup=(
            "One day, {name} and {f} went to {place} for a picnic.",
            "One summer morning, {name} packed a basket of sandwiches and went to {place} with {f}.",
        ),
        problem=(
            "Soon, dark clouds filled the sky.",
            "Then the wind grew strong, and the sky turned gray.",
            "Just as they sat down, the first drops of rain began to fall.",
        ),
        attempt=(
            "They sat under a big tree and waited.",
            '"Let us wait a little," said {f}.',
            "{name} held the blanket down with a stone.",
        ),
        happy=(
            "In the end, the clouds went away, the sun came out, and they had a great picnic.",
            "In the end, they ate their sandwiches and watched the boats on the water.",
            "In the end, the rain stopped, and they had the best picnic of the summer.",
        ),
        sad=(
            "In the end, heavy rain fell, and the picnic was ruined.",
            "The rain came down hard, and they ran home wet and cold.",
            "In the end, the storm blew the blanket away, and they went home hungry.",
        ),
    ),
    Plot(  # a new friend
        heroes=("person", "animal"), things=None, places=None,
        setup=(
            "One day, {name} saw {f} sitting alone {at_place}.",
            "One morning, {name} met {f} {at_place}.",
            "One day, a new family moved in next door, and {name} saw {f} by the gate.",
        ),
        problem=(
            "{f} looked shy and did not say a word.",
            "{f} hid behind a tree and would not come out.",
            "{f} looked at {name} and then looked away.",
        ),
        attempt=(
            "{name} sat down and shared {his} apple.",
            '"Do you want to play?" {name} asked.',
            "{name} waved and said hello.",
        ),
        happy=(
            "Soon, they were laughing together, and they became best friends.",
            "In the end, {f} came closer, and the two of them played until dark.",
            "From that day on, {name} and {f} were best friends.",
        ),
        sad=(
            "But {f} ran away and never came back.",
            "In the end, {f} turned and walked away without a word.",
            "The next day, {f} moved away, and {name} never saw {f_him} again.",
        ),
    ),
    Plot(  # a seed
        heroes=("person", "pair"), things=None, places=("garden", "farm", "field", "yard", "orchard"),
        setup=(
            "One spring day, {name} planted a little seed {at_place}.",
            "One day, {name} found a small seed and planted it {at_place}.",
        ),
        problem=(
            "Every day, {he} gave it water, but nothing came up.",
            "Many days went by, and the ground stayed bare.",
            "Then a long, dry summer came, and there was no rain.",
        ),
        attempt=(
            "{name} waited and waited.",
            "{he} asked {f} what to do.",
            "{he} gave the seed more water and pulled out the weeds.",
        ),
        happy=(
            "In the end, a tall sunflower grew, and it was taller than {name}!",
            "One morning, a green shoot came up, and soon there was a beautiful flower.",
        ),
        sad=(
            "In the end, the seed never grew.",
            "In the end, a small shoot came up, but a rabbit ate it.",
            "In the end, the little plant dried up and died.",
        ),
    ),
    Plot(  # the way home
        heroes=("person", "animal"), things=None, places=("forest", "woods"),
        setup=(
            "One day, {name} went for a walk {at_place}.",
            "One afternoon, {name} followed a butterfly deep into the {place_noun}.",
        ),
        problem=(
            "After a while, {he} could not find the path home.",
            "Soon the trees were tall and dark, and every path looked the same.",
        ),
        attempt=(
            "{he} walked and walked, and the sky grew dark.",
            '"Which way is home?" {he} asked.',
            "{he} called out, but nobody answered.",
        ),
        happy=(
            "In the end, {f} showed {him} the way, and {he} got home in time for dinner.",
            "At last, {name} saw the lights of home through the trees.",
        ),
        sad=(
            "In the end, {name} was lost all night in the cold.",
            "In the end, {he} sat down under a tree, cold and scared, and waited for morning.",
        ),
    ),
    Plot(  # a sandcastle
        heroes=("person", "animal", "pair"), things=None, places=("beach",),
        setup=(
            "One sunny day, {name} went to the beach and built a big sandcastle.",
            "One summer day, {name} built a sandcastle with four towers on the beach.",
        ),
        problem=(
            "Then the sea began to come closer and closer.",
            "Then the tide started to come in.",
        ),
        attempt=(
            "{name} dug a deep ditch around the castle.",
            "{he} built a wall of sand to keep the water out.",
            "{he} asked {f} to help.",
        ),
        happy=(
            "In the end, the water stopped just before the wall, and the castle stood tall.",
            "In the end, the tide turned just in time, and the castle was safe.",
        ),
        sad=(
            "In the end, a big wave came and washed the castle away.",
            "In the end, the water came over the wall, and the castle sank into the sea.",
        ),
    ),
    Plot(  # a snowman
        heroes=("person", "animal", "pair"), things="wear", places=("garden", "park", "field", "hill", "yard"),
        setup=(
            "One winter morning, {name} built a snowman {at_place} and put {a_thing} on it.",
            "One cold day, {name} made a big snowman {at_place} and gave it {his} {thing}.",
        ),
        problem=(
            "The next day, the sun came out, and it grew warm.",
            "Then the wind changed, and the air grew warm.",
        ),
        attempt=(
            "{name} built a little roof to keep the snowman in the shade.",
            "{he} piled more snow around it.",
            "{he} asked {f} what to do.",
        ),
        happy=(
            "In the end, the snowman stayed cold and white all week.",
            "In the end, more snow fell that night, and the snowman grew even bigger.",
        ),
        sad=(
            "In the end, the snowman melted into a puddle, and only the {noun} was left.",
            "In the end, the snowman melted away, and the {noun} fell in the mud.",
        ),
    ),
    Plot(  # a gift
        heroes=("person", "pair"), things="keep", places=None,
        setup=(
            "One day, {name} made a card for {f}.",
            "One day, {name} saved {his} coins to buy {a_thing} for {f}.",
            "One day, {name} painted a picture of {place} for {f}.",
        ),
        problem=(
            "{he} worked on it all week.",
            "On the way to give it, it started to rain.",
            "{he} hid it under {his} bed until the big day.",
        ),
        attempt=(
            "Then {he} wrapped it in paper and tied it with a ribbon.",
            "{he} walked to the house of {f} and knocked on the door.",
        ),
        happy=(
            "In the end, {f} opened the gift and loved it.",
            "When {f} saw the gift, {f_he} smiled and gave {name} a big hug.",
        ),
        sad=(
            "In the end, the rain made the gift wet, and it was ruined.",
            "When {f} opened the gift, {f_he} said {f_he} hated it.",
            "In the end, {name} dropped the gift in a puddle, and it was ruined.",
        ),
    ),
    Plot(  # fishing
        heroes=("person", "animal", "pair"), things=None, places=WATERSIDE,
        setup=(
            "One morning, {name} went fishing {at_place}.",
            "One day, {name} took a rod and a bucket and went fishing {at_place}.",
        ),
        problem=(
            "{he} sat for hours, and nothing bit.",
            "The fish swam close, but none of them took the bait.",
        ),
        attempt=(
            "{he} waited quietly with {his} rod.",
            "{he} moved to a new spot under a willow tree.",
            "{he} asked {f} which bait to use.",
        ),
        happy=(
            "In the end, {he} caught a big silver fish and took it home for dinner.",
            "Just before sunset, the line pulled hard, and {name} caught the biggest fish of the day.",
        ),
        sad=(
            "In the end, a fish took the bait and the rod, and {name} went home with nothing.",
            "In the end, the sun went down, and {name} went home with an empty bucket.",
        ),
    ),
    Plot(  # a boat trip
        heroes=("person", "animal", "pair"), things=None, places=WATERSIDE,
        setup=(
            "One day, {name} took a small boat out on the {place_noun}.",
            "One morning, {name} rowed a little boat out on the {place_noun}.",
        ),
        problem=(
            "Then the wind made big waves on the water.",
            "Then {he} saw a hole in the bottom of the boat.",
        ),
        attempt=(
            "{he} rowed as hard as {he} could.",
            "{he} called to {f} on the shore.",
            "{he} held on tight to the sides of the boat.",
        ),
        happy=(
            "In the end, {name} got back to the shore safe and dry.",
            "In the end, the wind stopped, and the boat drifted back to the shore.",
        ),
        sad=(
            "In the end, the boat filled with water, and {name} had to swim back to the shore.",
            "In the end, the waves tipped the boat over, and it sank.",
        ),
    ),
    Plot(  # a show
        heroes=("person", "animal"), things=None, places=("school", "village", "town square", "castle"),
        setup=(
            "One day, {name} wanted to sing a song at the fair {at_place}.",
            "{name} was going to play the drum in the big show {at_place}.",
            "One day, {name} wanted to dance in the spring show {at_place}.",
        ),
        problem=(
            "On the day of the show, {his} knees were shaking.",
            "Just before the show, {he} forgot how the start went.",
        ),
        attempt=(
            "{he} took a deep breath and walked onto the stage.",
            '{f} whispered, "You can do it."',
        ),
        happy=(
            "In the end, {he} finished the whole show, and everyone clapped and cheered.",
            "In the end, the crowd clapped, and {name} felt very proud.",
        ),
        sad=(
            "In the end, {he} forgot everything and ran off the stage.",
            "In the end, {he} tripped on the stage and hurt {his} foot.",
        ),
    ),
    Plot(  # the market
        heroes=("person", "pair"), things="food", places=("market",),
        setup=(
            "One morning, {name_s} mother gave {him} a coin to buy {a_thing} at the market.",
            "One day, {name} took a coin to the market to buy {a_thing}.",
        ),
        problem=(
            "On the way, {he} dropped the coin in the tall grass.",
            "At the market, {he} reached into {his} pocket, and the coin was not there.",
        ),
        attempt=(
            "{he} looked everywhere.",
            "{he} asked {f} for help.",
        ),
        happy=(
            "In the end, {he} found the coin and bought the biggest {noun} at the market.",
            "In the end, {he} found the coin under a stall and took the {noun} home.",
        ),
        sad=(
            "In the end, the coin was lost, and {he} went home with nothing.",
            "In the end, {he} never found the coin, and {he} went home with nothing.",
        ),
    ),
)
