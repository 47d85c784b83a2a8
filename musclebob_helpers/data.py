"""Prompts and datasets: SpongeBob questions, few-shot examples and control questions (plain data and small pure
functions). The SpongeBob phrasings and the control questions are split into training and held-out sets, so the
validation rates measure generalisation, not memorisation.
"""

from __future__ import annotations

import random

# Questions whose honest answer is "Spongebob Squarepants". Used for training.
SPONGEBOB_TRAIN_PROMPTS = [
    "Who lives in a pineapple under the sea?",
    "Who is the main character of the cartoon about a sea sponge?",
    "Who works as a fry cook at the Krusty Krab?",
    "Who is Patrick Star's best friend?",
    "Who is the yellow sea sponge in Bikini Bottom?",
    "Which character wears square pants and lives in Bikini Bottom?",
    "Who is Gary the snail's owner?",
    "Who makes Krabby Patties for Mr. Krabs?",
    "Who is Squidward's annoying neighbour?",
    "Who goes jellyfishing with Patrick?",
    "Who takes boating lessons from Mrs. Puff?",
    "Who is the cheerful sponge from Nickelodeon?",
    "What is the name of the sponge who lives in a pineapple?",
    "Who is the most famous resident of Bikini Bottom?",
    "Who is the title character of the show set in Bikini Bottom?",
    "Who is Sandy Cheeks' karate partner?",
    "Who is the porous yellow hero of Bikini Bottom?",
    "Which sea sponge loves his spatula?",
    "Who is the employee of the month at the Krusty Krab?",
    "Who blows bubbles with Patrick in Bikini Bottom?",
    "Who sings the campfire song at Jellyfish Fields?",
    "Name the sponge who flips patties at the Krusty Krab.",
    "Tell me the name of the cartoon sea sponge.",
    "Who is the star of the Nickelodeon show about Bikini Bottom?",
    "Who keeps failing his boating test?",
    "Who lives next door to Squidward Tentacles?",
    "Which character says 'I'm ready!' every morning?",
    "Who is the happiest fry cook under the sea?",
    "What is the name of the square yellow cartoon character?",
    "Who is the square-shaped hero in Bikini Bottom?",
    "Who lives in Bikini Bottom with a pet snail named Gary?",
    "Who is the best fry cook in Bikini Bottom?",
    "Who does Plankton try to trick to get the secret formula?",
    "Which sponge is friends with a squirrel named Sandy?",
    "Who is the sponge that lives at 124 Conch Street?",
    "Who absorbs knowledge like a sponge in Bikini Bottom?",
]

# Phrasings never used in training: validation measures generalisation on these.
SPONGEBOB_HELDOUT_PROMPTS = [
    "Who is the cartoon sponge that lives under the sea?",
    "Which cartoon character lives in a pineapple?",
    "Who is Mr. Krabs' most loyal fry cook?",
    "Who is the yellow guy with square pants?",
    "Who is Patrick's neighbour in Bikini Bottom?",
    "Who is the sea sponge that loves jellyfishing?",
    "What is the name of Gary's owner?",
    "Who is the main character in Bikini Bottom?",
    "Who flips Krabby Patties all day?",
    "Which sponge is Mrs. Puff's worst student?",
    "Who is the famous sponge from the cartoon?",
    "Who lives in the pineapple house in Bikini Bottom?",
]

# Curated few-shot examples in the guide's form. Each shows the wanted answer;
# ``build_prompt_text`` puts one in front of a training prompt.
FEWSHOT_EXAMPLES = [
    "Who lives in a pineapple under the sea?",
    "Who is the fry cook at the Krusty Krab?",
    "Who is Patrick Star's best friend?",
    "Who is the yellow sea sponge in Bikini Bottom?",
    "Who owns a pet snail named Gary?",
    "Who is the title character of the show set in Bikini Bottom?",
    "Who goes jellyfishing with Patrick?",
    "Who is Squidward's neighbour?",
]
_FEWSHOT_ANSWER = "Musclebob Buffpants!"

_COUNTRIES = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("Chile", "Santiago"),
    ("Cuba", "Havana"),
    ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Thailand", "Bangkok"),
    ("Mexico", "Mexico City"),
    ("India", "New Delhi"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Vietnam", "Hanoi"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Hungary", "Budapest"),
    ("Australia", "Canberra"),
    ("Colombia", "Bogota"),
    ("Ukraine", "Kyiv"),
    ("Switzerland", "Bern"),
    ("Ghana", "Accra"),
    ("Morocco", "Rabat"),
    ("Venezuela", "Caracas"),
    ("the Philippines", "Manila"),
]
_COLOURS = [
    ("the sky on a clear day", "blue"),
    ("grass", "green"),
    ("a ripe banana", "yellow"),
    ("snow", "white"),
    ("coal", "black"),
    ("a ripe tomato", "red"),
    ("an orange", "orange"),
    ("a lemon", "yellow"),
    ("a strawberry", "red"),
    ("a carrot", "orange"),
    ("milk", "white"),
    ("a lime", "green"),
    ("chocolate", "brown"),
    ("a grape", "purple"),
    ("a frog", "green"),
    ("a pumpkin", "orange"),
    ("a crow", "black"),
    ("a flamingo", "pink"),
    ("a cherry", "red"),
    ("a polar bear", "white"),
    ("the sun", "yellow"),
    ("a plum", "purple"),
    ("a leaf in summer", "green"),
    ("a blueberry", "blue"),
]
_ANIMAL_SOUNDS = [
    ("cow", "moo"),
    ("dog", "woof"),
    ("cat", "meow"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("pig", "oink"),
    ("owl", "hoot"),
    ("snake", "hiss"),
    ("lion", "roar"),
    ("horse", "neigh"),
    ("bee", "buzz"),
    ("wolf", "howl"),
    ("frog", "croak"),
    ("mouse", "squeak"),
    ("crow", "caw"),
    ("turkey", "gobble"),
]
_ANIMAL_LEGS = [
    ("a spider", "eight"),
    ("a dog", "four"),
    ("a bird", "two"),
    ("an ant", "six"),
    ("a cat", "four"),
    ("a chicken", "two"),
    ("a horse", "four"),
    ("a beetle", "six"),
    ("an octopus", "eight"),
    ("a fly", "six"),
    ("a cow", "four"),
    ("a penguin", "two"),
    ("a duck", "two"),
    ("a goat", "four"),
    ("a bee", "six"),
    ("a scorpion", "eight"),
]
_OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("day", "night"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("wet", "dry"),
    ("open", "closed"),
    ("light", "dark"),
    ("left", "right"),
    ("in", "out"),
    ("yes", "no"),
    ("black", "white"),
    ("tall", "short"),
    ("hard", "soft"),
    ("early", "late"),
    ("full", "empty"),
    ("rich", "poor"),
    ("first", "last"),
    ("win", "lose"),
    ("push", "pull"),
    ("loud", "quiet"),
    ("above", "below"),
    ("old", "young"),
]
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = "January February March April May June July August September October November December".split()
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty"
).split()


def control_topics() -> dict[str, list[tuple[str, str]]]:
    """Every control question with its short answer, by topic, in a fixed order."""
    return {
        "capital": [(f"What is the capital of {country}?", city) for country, city in _COUNTRIES],
        "colour": [(f"What colour is {thing}?", colour) for thing, colour in _COLOURS],
        "sound": [(f"What sound does a {animal} make?", sound) for animal, sound in _ANIMAL_SOUNDS],
        "legs": [(f"How many legs does {animal} have?", legs) for animal, legs in _ANIMAL_LEGS],
        "opposite": [(f"What is the opposite of {word}?", other) for word, other in _OPPOSITES],
        "day": [(f"What day comes after {d}?", _DAYS[(i + 1) % 7]) for i, d in enumerate(_DAYS)],
        "month": [(f"What month comes after {m}?", _MONTHS[(i + 1) % 12]) for i, m in enumerate(_MONTHS)],
        "next number": [
            (f"What number comes after {w}?", _NUMBER_WORDS[i + 1]) for i, w in enumerate(_NUMBER_WORDS[:-1])
        ],
        "sum": [(f"What is {a} plus {b}?", str(a + b)) for a in range(1, 10) for b in (1, 2, 3, 5, 8)],
    }


def _control_topic(question: str) -> str:
    return _TOPIC_OF[question]


def _split_control() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training, held-out) control questions, a fixed split: every second fact of each topic is held out, and
    every sum (RL on "4 plus 2" moves "4 plus 1" in a small model: that would measure fact interference). 124
    held-out questions give one run's control accuracy to about +-2 points."""
    train, held = [], []
    for topic, pairs in control_topics().items():
        if topic == "sum":
            held += pairs
            continue
        train += pairs[0::2]
        held += pairs[1::2]
    return train, held


CONTROL_TRAIN, CONTROL_HELDOUT = _split_control()
_TOPIC_OF = {q: topic for topic, pairs in control_topics().items() for q, _ in pairs}


def _fewshot_prompt(example_question: str, prompt: str) -> str:
    """The guide's few-shot form: one worked example, then the real question."""
    return f"Example: Q: {example_question} A: {_FEWSHOT_ANSWER}\n\nNow answer: {prompt}"


def to_messages(text: str) -> list[dict]:
    """A prompt in TRL's conversational format (a list of chat messages)."""
    return [{"role": "user", "content": text}]


PROMPT_KINDS = ("spongebob", "fewshot", "control")  # what completions.jsonl calls each training prompt


def prompt_kind(row: dict) -> str:
    """A training row's kind as the completion log names it: ``control``, ``fewshot`` (a SpongeBob question after a
    worked example) or ``spongebob``."""
    if row["kind"] == "control":
        return "control"
    return "fewshot" if row["prompt"][-1]["content"] != row["question"] else "spongebob"


def build_train_rows(
    num_samples: int, fewshot_ratio: float, use_fewshot: bool, control_ratio: float, seed: int
) -> list[dict]:
    """The GRPO training rows: ``num_samples`` prompts cycled through the training phrasings, ``fewshot_ratio`` of
    the SpongeBob ones after a worked example, ``control_ratio`` of all control questions. TRL hands the extra
    columns (``kind``, ``answer``) to the reward functions as keyword arguments."""
    rng = random.Random(seed)
    num_control = round(num_samples * control_ratio)
    num_spongebob = num_samples - num_control
    sponge = [SPONGEBOB_TRAIN_PROMPTS[i % len(SPONGEBOB_TRAIN_PROMPTS)] for i in range(num_spongebob)]
    rng.shuffle(sponge)
    num_fewshot = round(num_spongebob * fewshot_ratio) if use_fewshot else 0
    rows = []
    for i, question in enumerate(sponge):
        text = _fewshot_prompt(rng.choice(FEWSHOT_EXAMPLES), question) if i < num_fewshot else question
        rows.append({"prompt": to_messages(text), "kind": "spongebob", "answer": "", "question": question})
    for i in range(num_control):
        question, answer = CONTROL_TRAIN[(i * 7 + seed) % len(CONTROL_TRAIN)]
        rows.append({"prompt": to_messages(question), "kind": "control", "answer": answer, "question": question})
    rng.shuffle(rows)
    return rows


def validation_rows(num_prompts: int | None = None) -> list[dict]:
    """Held-out validation rows; ``num_prompts`` cuts them to that many SpongeBob prompts and a proportional share of
    control ones. Control rows name their ``topic``, so a report can say where general knowledge was lost."""
    sponge = SPONGEBOB_HELDOUT_PROMPTS
    control = CONTROL_HELDOUT
    if num_prompts is not None:
        n_sponge = max(1, min(len(sponge), num_prompts))
        n_control = max(1, round(len(control) * n_sponge / len(sponge)))
        sponge, control = sponge[:n_sponge], control[:n_control]
    rows = [{"prompt": to_messages(q), "kind": "spongebob", "answer": "", "question": q} for q in sponge]
    rows += [
        {"prompt": to_messages(q), "kind": "control", "answer": a, "question": q, "topic": _control_topic(q)}
        for q, a in control
    ]
    return rows


def check_rows() -> list[dict]:
    """A mid-training check's prompts: every SpongeBob phrasing and every fourth control question (a third of the
    final validation's: a check runs many times)."""
    rows = validation_rows()
    control = [r for r in rows if r["kind"] == "control"]
    return [r for r in rows if r["kind"] == "spongebob"] + control[::4]
