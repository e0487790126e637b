"""Screens: answered / drifted / shrunk rewrites, repetitive / wrong-language / off-topic answers, and batches."""

import re

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.utils.text import split_into_words

from teams_rl.env.screens import (
    ANSWERED,
    COPIED,
    DRIFTED,
    OFF_TOPIC,
    REPETITIVE,
    SHRUNK,
    WRONG_LANGUAGE,
    RegexWordTokenizer,
    ScreenArguments,
    Screens,
    answered,
    copied,
    drifted,
    has_request_cue,
    off_topic,
    repetitive,
    shrunk,
    wrong_language,
)

SNOW = "Write a short poem about the first snowfall of winter."
SEQUENCE = "What number comes next in the sequence 2, 6, 12, 20, 30? Explain the pattern."
STRETCH = "Suggest a simple 15-minute morning stretching routine."
PACKING = "Make a packing list for a weekend trip"
GERMAN = (
    "Für ein Wochenende brauchst du natürlich Kleidung, eine Zahnbürste und ein Ladegerät. Dann packst du noch "
    "Socken ein und vielleicht ein Buch, weil es am Abend oft langweilig wird."
)
LOOP = (
    "Preheat the oven to 160C. Press the crumbs into the tin, pour in the filling and bake for an hour so that it "
    "is fully set, " + "so that it is fully set, " * 30
)

# ---------------------------------------------------------------- answered

ANSWERS = [
    "The output will be 30.",  # complicate_input on SEQUENCE
    "15 minutes of brisk walking.",  # STRETCH
    "There are 12 chickens and 8 cows, so 12*2 + 8*4 = 56 legs.",  # the legs puzzle
    "The next number is 42.",
    "42",
    "**Answer:** 30",
    '"The pattern adds 2 more each time, so the answer is 42."',
    "Sure! The answer is 56 legs.",
    "- Socks\n- Toothbrush\n- Charger",
    "Stretch your arms for 30 seconds, then touch your toes.",  # imperative steps of an answer, not a request
    "You should walk briskly for 15 minutes every morning.",
    "Make sure to stretch every morning.",
    "When you wake up, stretch for 15 minutes.",
    "I would suggest 15 minutes of yoga.",
    "List of items: socks, shirts.",
    "Snow falls softly on the silent town,\nthe first white blanket of the year.",
]

REWRITES = [
    "Write a short poem of exactly three stanzas about the first snowfall of winter, ending each with a couplet.",
    "In 150 words, describe how the first snowfall changes a small mountain village.",
    "Using the data below, calculate the average monthly sales and identify the best month.\n\nInput:\n"
    "| Month | Sales |\n| Jan | 100 |\n| Feb | 140 |",
    "As a nutritionist, design a 7-day meal plan for a vegetarian marathon runner.",
    "What number comes next in the sequence 2, 6, 12, 20, 30, 42? Explain the pattern and give a formula.",
    "A farmer has chickens and cows. There are 20 heads and 56 legs in total. How many of each are there",
    "A farmer has chickens and cows with 20 heads and 56 legs. Determine how many of each there are, step by step.",
    "Suggest a 15-minute morning stretching routine for office workers with back pain, listing each stretch.",
    "- Write a haiku about snow.\n- Then explain the imagery you used.",
    "**Rewrite** the following message so that it sounds formal and polite, in under 50 words.\n\nInput:\n"
    "Hey, we can't make it tomorrow, something came up.",
    '"Explain how vaccines train the immune system, including the role of memory cells."',
    "Please list five uses of vinegar in the kitchen and explain why each works.",
    "Given a list of integers, write a Python function that returns the second largest value without sorting.",
    "Based on the passage below, summarize the author's main argument in two sentences.\n\nInput:\nThe text.",
    "Imagine you are a lighthouse keeper in 1890. Write a diary entry about the night of a great storm.",
    "Compare running and weight training in terms of heart health, bone density and mood.",
    "Consider a train that travels 240 km in 3 hours with two 10-minute stops. First compute its average speed.",
    "1. Read the code below.\n2. Explain what it prints and why.\n\nInput:\n```python\nprint(sorted(['fig']))\n```",
    "You are asked to plan a weekend in Lisbon on a budget of 300 euros, including transport, food and museums.",
    "Your task: draft a thank-you note to a neighbor who watered your plants for two weeks.",
    "Could you outline the causes and effects of the French Revolution, with dates",
    "Then, in three sentences, describe a busy train station at rush hour from the point of view of a pigeon.",
    "Step 1: Solve the equation 3x + 7 = 22 for x. Step 2: Check your answer by substitution.",
    "I need a packing list for a two-night camping trip in the Scottish Highlands in October.",
    "How does the first snowfall affect city traffic, public transport and schools",
    "Tell a bedtime story about a fox who is afraid of the snow, in under 200 words.",
    "For a 10-year-old, explain why the sky is blue, using one everyday comparison.",
    "Generate three multiple-choice questions about photosynthesis, each with four options.",
    "Briefly, carefully explain the difference between a list and a tuple in Python.",
    "> Translate the following sentence into French and German.\n\nInput:\nGood morning, how are you?",
    "Now, rank the following planets by size, from largest to smallest: Mars, Jupiter, Earth, Venus.",
    "When is it better to use a hash map than a sorted array? Discuss time and memory costs.",
    "Suppose a shop sells pencils at 3 for $1 and gives 10% off orders over $5. Work out the cost of 18 pencils.",
    "You must write an SQL query that returns total sales per month from an orders table, sorted by month.",
    "__Create__ a weekly cleaning schedule for a shared flat of four students.",
    "The task is to write a limerick about a cat who is afraid of cucumbers.",
]


@pytest.mark.parametrize("text", ANSWERS)
def test_answered_catches_answers(text):
    assert answered(text) == ANSWERED
    assert not has_request_cue(text)


@pytest.mark.parametrize("text", REWRITES)
def test_answered_passes_good_rewrites(text):
    assert answered(text) is None


def test_answered_reads_only_the_instruction_part():
    # A question mark or a verb inside the input does not make an answer a request.
    assert answered("The output will be 30.\n\nInput:\nWhat comes next? List the terms.") == ANSWERED


# ---------------------------------------------------------------- shrunk / drifted


def test_shrunk_in_depth_rewrites_only():
    assert shrunk(STRETCH, "15 minutes of brisk walking.", "add_constraints") == SHRUNK
    assert shrunk(STRETCH, "Suggest a morning stretching routine.", "deepen") == SHRUNK  # 5 < 0.8 x 7 words
    assert shrunk(STRETCH, "Suggest a simple 15-minute stretching routine.", "deepen") is None  # 6 >= 5.6
    assert shrunk(STRETCH, REWRITES[7], "concretize") is None
    assert shrunk(STRETCH, "Name two yoga poses.", "in_breadth") is None  # a new prompt may be shorter
    assert shrunk(STRETCH, "Walk.", "deepen", min_ratio=0) is None


def test_shrunk_counts_the_input_block():
    parent = "Fix the bug.\n\nInput:\ndef f(x):\n    return x =+ 1"
    assert shrunk(parent, "Find and fix the bug in this function.", "complicate_input") is None
    assert shrunk(parent, "Fix it.", "complicate_input") == SHRUNK


def test_drifted_thresholds():
    assert drifted(0.2, "deepen") == DRIFTED
    assert drifted(0.5, "deepen") is None
    assert drifted(0.2, "in_breadth") is None  # in_breadth has the lower threshold
    assert drifted(0.1, "in_breadth") == DRIFTED
    assert drifted(-0.3, "deepen", min_similarity=0) is None
    assert drifted(-0.3, "in_breadth", breadth_min_similarity=0) is None


def test_off_topic_threshold():
    assert off_topic(0.05) == OFF_TOPIC
    assert off_topic(0.3) is None
    assert off_topic(-0.5, min_relevance=0) is None


# ---------------------------------------------------------------- repetitive

SHORT_ANSWERS = {
    "recipe": "Ingredients:\n- 1 cup flour\n- 1 cup sugar\n- 1 cup milk\n- 2 eggs\n\nSteps:\n1. Preheat the oven to "
    "180C.\n2. Mix the flour and sugar.\n3. Add the milk and eggs.\n4. Bake for 25 minutes.",
    "cups": "- 1 cup flour\n- 1 cup sugar\n- 1 cup milk\n- 1 cup oats",
    "steps": "1. Stand tall and reach up for 30 seconds.\n2. Bend forward and touch your toes for 30 seconds.\n"
    "3. Do 10 arm circles forward and 10 arm circles backward.\n4. Stretch each hamstring for 30 seconds.",
    "refrain": "Snow falls soft upon the town,\nThe first white hush of winter's crown.\nThe rooftops sleep, the "
    "streets lie still,\nSnow falls soft upon the town.",
    "refrain_line": "Snow falls soft,\nthe world is white.\nSnow falls soft,\nall through the night.",
    "refrain_twice": "Roses in the garden,\nlilies by the door,\nthe summer keeps on singing,\nthe summer keeps on "
    "singing,\nand I could ask no more.",
    "chorus": "Verse 1:\nWe walk the road together\n\nChorus:\nSing it loud, sing it clear\n\nVerse 2:\nWe climb the "
    "hills together\n\nChorus:\nSing it loud, sing it clear",
    "short": "The next number is 42, because the differences grow by 2 each time: 4, 6, 8, 10, 12.",
    "sql": "SELECT DATE_TRUNC('month', order_date) AS month, SUM(amount) AS total FROM orders "
    "GROUP BY DATE_TRUNC('month', order_date) ORDER BY month;",
    "table": "| Day | Task |\n|---|---|\n| Monday | Run |\n| Tuesday | Rest |\n| Wednesday | Run |\n| Friday | Rest |",
    "code": "```python\ndef is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]\n\nprint(is_palindrome("
    "'racecar'))  # True\nprint(is_palindrome('hello'))  # False\n```",
    "email": "Dear Ms. Smith,\n\nThank you for watering my plants while I was away. They look wonderful.\n\n"
    "Best regards,\nTom",
    "faq": "Q: What is a noun?\nA: A word that names a thing.\n\nQ: What is a verb?\nA: A word that names an action.",
    "yes": "Yes.",
}
LOOPS = {
    "fully_set": LOOP,
    "fully_set_short": "Chill it overnight so that it is fully set, so that it is fully set, so that it is fully set.",
    "sentence": "The next number is 42. " * 5,
    "line": "Pack clothes.\n" + "Pack a toothbrush.\n" * 5,
    "paragraph": "Stretch your arms for one minute and breathe slowly.\n\n" * 3,
    "list": "- apples\n" * 5,
    "words": "very " * 10 + "good",
}


@pytest.mark.parametrize("name", SHORT_ANSWERS)
def test_repetitive_passes_short_answers(name):
    assert repetitive(SHORT_ANSWERS[name]) is None


@pytest.mark.parametrize("name", LOOPS)
def test_repetitive_catches_loops(name):
    assert repetitive(LOOPS[name]) == REPETITIVE


def test_repetitive_leaves_empty_replies_to_the_stopwords_rule():
    assert repetitive("") is None
    assert repetitive("  \n") is None


@pytest.mark.parametrize("name", ["cups", "refrain", "refrain_line", "short", "sql", "chorus"])
def test_gopher_defaults_misfire_on_short_answers(name):
    """Why the repetition filter is tuned: with Gopher's web-page limits these normal answers are dropped."""
    default = GopherRepetitionFilter(language=RegexWordTokenizer())
    assert default.filter(Document(text=SHORT_ANSWERS[name], id=name)) is not True


def test_regex_word_tokenizer():
    tok = RegexWordTokenizer()
    assert tok.word_tokenize("Don't stop: 12 cups, now!") == ["Don't", "stop", "12", "cups", "now"]
    text = "First one. Second one!\nThird line"
    assert tok.sent_tokenize(text) == ["First one.", "Second one!", "Third line"]
    assert [text[a:b] for a, b in tok.span_tokenize(text)] == tok.sent_tokenize(text)
    assert tok == RegexWordTokenizer() and hash(tok) == hash(RegexWordTokenizer())  # datatrove lru_caches on it
    assert tok != RegexWordTokenizer("de")
    assert split_into_words("so that it is set", tok) == ["so", "that", "it", "is", "set"]


# ---------------------------------------------------------------- wrong language


def test_wrong_language():
    assert wrong_language(PACKING, GERMAN) == WRONG_LANGUAGE
    assert wrong_language(PACKING, SHORT_ANSWERS["steps"]) is None
    assert wrong_language(PACKING, "Kleidung, Zahnbürste, Ladegerät, Socken.") is None  # too short to judge
    assert wrong_language(PACKING, GERMAN, expected=None) is None
    assert wrong_language(PACKING, GERMAN, expected="none") is None
    assert wrong_language(PACKING, GERMAN, expected="de") is None


def test_wrong_language_follows_the_instruction():
    assert wrong_language("Translate into German: I need clothes, a toothbrush and a charger.", GERMAN) is None
    assert wrong_language(PACKING + ", in German.", GERMAN) is None
    assert wrong_language("Summarize this text in one sentence.\n\nInput:\n" + GERMAN, GERMAN) is None


def test_wrong_language_ignores_code_and_unsure_guesses():
    code = "```python\ndef f(xs):\n    return [x for x in xs if x]\n```\nDiese Funktion filtert."
    assert wrong_language("Write a Python function that drops empty items.", code) is None
    mixed = "Here is a list: Kleidung (clothes), Zahnbürste (toothbrush), Ladegerät (charger). Have a nice trip!"
    assert wrong_language(PACKING, mixed) is None


# ---------------------------------------------------------------- batches


class FakeEmbedder:
    """Bag of words hashed into 64 dimensions; records every encode call."""

    def __init__(self):
        self.calls = []

    def encode(self, texts, normalize_embeddings, convert_to_numpy, show_progress_bar):
        assert normalize_embeddings and convert_to_numpy and not show_progress_bar
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 64))
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[row, sum(map(ord, word)) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_rewrites_order_and_one_encode_per_batch():
    embedder = FakeEmbedder()
    screens = Screens(ScreenArguments(), embedder)
    items = [
        (SEQUENCE, SEQUENCE, "The output will be 30.", "complicate_input"),  # answered (and shrunk, and drifted)
        (STRETCH, STRETCH, "Suggest a stretch.", "deepen"),  # shrunk, a request
        (SNOW, SNOW, "List three tax deductions for small businesses and explain each one briefly.", "deepen"),
        (SNOW, SNOW, "Write a short poem about the first snowfall of winter in a mountain village.", "deepen"),
        (SNOW, SNOW, "Write a short poem about the last leaf of autumn.", "in_breadth"),
        (SNOW, SNOW, "Write a short poem about the first snowfall of winter in a mountain village.", "add_reasoning"),
    ]
    assert screens.rewrites(items) == [ANSWERED, SHRUNK, DRIFTED, None, None, None]
    assert len(embedder.calls) == 1
    encoded = embedder.calls[0]
    assert len(encoded) == len(set(encoded)) == 4  # distinct texts of the items the text rules kept
    assert "The output will be 30." not in encoded


def test_rewrites_without_embedder_skip_drift():
    items = [(SNOW, SNOW, "List three tax deductions for small businesses and explain each one briefly.", "deepen")]
    assert Screens(ScreenArguments(), None).rewrites(items) == [None]


def test_rewrites_switches_and_zero_thresholds():
    args = ScreenArguments(
        screen_answered=False, screen_min_length_ratio=0, screen_min_similarity=0, screen_min_novelty=0
    )
    embedder = FakeEmbedder()
    items = [(SEQUENCE, SEQUENCE, "The output will be 30.", "deepen"), (SNOW, SNOW, "Sort 3 numbers.", "deepen")]
    assert Screens(args, embedder).rewrites(items) == [None, None]
    assert embedder.calls == []  # nothing to compare: no encode call
    breadth = [(SNOW, SNOW, "Sort three numbers in Python.", "in_breadth")]
    assert Screens(args, embedder).rewrites(breadth) == [DRIFTED]  # the breadth threshold still runs
    off = ScreenArguments(screen_breadth_min_similarity=0, screen_min_novelty=0)
    assert Screens(off, embedder).rewrites(breadth) == [None]


def test_copied_needs_novelty_against_the_parent_and_the_seed():
    assert copied(0.97) == COPIED and copied(0.94) is None and copied(0.999, min_novelty=0) is None
    embedder = FakeEmbedder()
    screens = Screens(ScreenArguments(screen_min_similarity=0, screen_breadth_min_similarity=0), embedder)
    grown = "Write a short poem about the first snowfall of winter in a mountain village."
    items = [
        (SNOW, SNOW, SNOW + " ", "deepen"),  # the seed again (the paper's rule only catches exact copies)
        (SNOW, SNOW, "Write a short poem about the first snowfall of winter!", "in_breadth"),  # a breadth copy
        (SNOW, grown, grown, "concretize"),  # copies its parent at depth 2
        (SNOW, grown, SNOW, "in_breadth"),  # goes back to the seed at depth 2 (in depth, shrunk catches it first)
        (SNOW, SNOW, grown, "deepen"),
    ]
    assert screens.rewrites(items) == [COPIED, COPIED, COPIED, COPIED, None]
    assert len(embedder.calls) == 1  # seed and parent comparisons share one encode call


def test_responses_order_and_one_encode_per_batch():
    embedder = FakeEmbedder()
    screens = Screens(ScreenArguments(), embedder)
    loop_in_german = GERMAN + " " + "so dass es fest wird, " * 20
    items = [
        (PACKING, loop_in_german),  # repetitive wins over wrong_language
        (PACKING, GERMAN),
        (PACKING, "The French Revolution began in 1789 when the Estates-General met."),
        (PACKING, "Packing list for a weekend trip: clothes, toothbrush, charger, a book."),
        (PACKING, "Packing list for a weekend trip: clothes, toothbrush, charger, a book."),
    ]
    assert screens.responses(items) == [REPETITIVE, WRONG_LANGUAGE, OFF_TOPIC, None, None]
    assert len(embedder.calls) == 1 and len(embedder.calls[0]) == 3


def test_responses_switches_and_no_embedder():
    items = [(PACKING, LOOP), (PACKING, GERMAN), (PACKING, "The French Revolution began in 1789.")]
    assert Screens(ScreenArguments(), None).responses(items) == [REPETITIVE, WRONG_LANGUAGE, None]
    off = ScreenArguments(screen_repetition=False, screen_language=None, screen_min_relevance=0)
    embedder = FakeEmbedder()
    assert Screens(off, embedder).responses(items) == [None, None, None]
    assert embedder.calls == []


def test_screen_arguments_parse():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ScreenArguments).parse_args_into_dataclasses(["--screen_min_relevance", "0"])
    assert args.screen_min_relevance == 0 and args.screen_language == "en" and args.screen_answered


# ---------------------------------------------------------------- real embeddings (the embedded MiniLM)


@pytest.fixture(scope="module")
def minilm():
    from teams_rl.llm.embeddings import load_embedder

    return load_embedder("minilm")


def cosine(embedder, a, b):
    x, y = embedder.encode([a, b], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return float(x @ y)


def test_default_thresholds_on_minilm_rewrites(minilm):
    taxes = "List three tax deductions for small businesses."
    assert drifted(cosine(minilm, taxes, SNOW), "deepen") == DRIFTED
    assert drifted(cosine(minilm, taxes, SNOW), "in_breadth") == DRIFTED
    screens = Screens(ScreenArguments(), minilm)
    good = "In 12 lines, write a poem about the first snowfall of winter from the point of view of a fox."
    taxes = "List three tax deductions for small businesses and explain who can claim each one."
    items = [
        (SNOW, SNOW, taxes, "deepen"),
        (SNOW, SNOW, taxes, "in_breadth"),
        (SNOW, SNOW, good, "concretize"),
        (SNOW, SNOW, "Write a sonnet about a beekeeper's last honey harvest before the frost.", "in_breadth"),
        ("Explain how vaccines work.", "Explain how vaccines work.", "Describe the rules of chess.", "deepen"),
        (STRETCH, STRETCH, REWRITES[7], "add_constraints"),
        (SEQUENCE, SEQUENCE, REWRITES[4], "add_reasoning"),
    ]
    assert screens.rewrites(items) == [DRIFTED, DRIFTED, None, None, DRIFTED, None, None]


def test_default_novelty_on_minilm_catches_the_explore_tables_copies(minilm):
    # kept by the 135M judge in runs/s10k4's explore table (novelty 0.005 and 0.012); the grown rewrites stay
    thanks = "Write a thank-you note to a neighbor who watered your plants while you were away."
    largest = "Write a Python function that returns the largest number in a list without using max()."
    items = [
        (
            thanks,
            thanks,
            "Write a thank-you note to the neighbor who watered your plants while you were away.",
            "deepen",
        ),
        (largest, largest, largest.replace("returns", "takes a list of numbers and returns"), "in_breadth"),
        (thanks, thanks, thanks[:-1] + " for two weeks, and mention the tomatoes they saved.", "concretize"),
        (SNOW, SNOW, "In 12 lines, write a poem about the first snowfall of winter from a fox's view.", "concretize"),
    ]
    assert Screens(ScreenArguments(), minilm).rewrites(items) == [COPIED, COPIED, None, None]


def test_default_thresholds_on_minilm_responses(minilm):
    screens = Screens(ScreenArguments(), minilm)
    items = [
        (PACKING, "The French Revolution began in 1789 when the Estates-General met in Versailles."),
        ("Write a Python function that checks whether a string is a palindrome.", "Preheat the oven to 180C."),
        (SNOW, "SELECT name FROM customers WHERE country = 'Canada';"),
        (PACKING, "- 2 T-shirts\n- 1 pair of jeans\n- Socks\n- Toothbrush and toothpaste\n- Phone charger"),
        ("A train travels 240 kilometers in 3 hours. What is its average speed?", "240 km / 3 h = 80 km/h."),
        (SNOW, "The world went quiet overnight,\nand every branch was dressed in white."),
        ("Is 17 a prime number?", "Yes."),
        ("What is 15 percent of 80? Show your working.", "12"),
    ]
    assert screens.responses(items) == [OFF_TOPIC, OFF_TOPIC, OFF_TOPIC, None, None, None, None, None]


# Seen in the explore table of the embedded model: a request with the answer beside it, kept by the request cue.
SHOWS_AN_ANSWER = [
    'Write the opening paragraph of a mystery story set in a lighthouse.\n\nOutput:\n"The island of the moon"',
    "1. Start with the feet. 2. Place your hands on your hips. 3. Go up for 15 seconds.",
    "CREATE TABLE orders (order_date INT);\nEXPLAINING: SELECT SUM(amount) AS total_sales FROM orders;",
    "SELECT * FROM customers WHERE country='Canada';",
    "Is it possible to conclude that all cats are black based on a single premise?\n\nYes.",
    "Solve 3x + 7 = 22.\n\nAnswer: x = 5",
]


@pytest.mark.parametrize("text", SHOWS_AN_ANSWER)
def test_a_request_that_carries_its_answer_is_answered(text):
    assert answered(text) == ANSWERED


@pytest.mark.parametrize(
    "text",
    [
        "Create a table comparing solar, wind and hydro power for a cold climate.",
        "Write an SQL query that lists customers.\n\nInput:\n- id\n- name",
        "List three tips for the morning:\n1. one about light",
        "Does it follow that some cats are black? Explain yes or no.",
    ],
)
def test_requests_that_mention_lists_code_or_verdicts_pass(text):
    assert answered(text) is None
