"""Pure parsers of LLM replies: judge verdicts, 1-10 grades, rewrites, and the text elimination rules."""

import pytest

from teams_rl.env.parsing import (
    copies_template_words,
    format_rewrite,
    is_only_punct_or_stopwords,
    is_refusal,
    parse_grade,
    parse_judgement,
    parse_rewrite,
)

# ---------------------------------------------------------------- judgement


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", True),
        ("yes", True),
        ("YES", True),
        ("  yes  ", True),
        ("Yes!", True),
        ("Y", True),
        ("**NO**", False),
        ("no.", False),
        ("n", False),
        ("No, it is the same.", False),
        ("NO, B is just a copy", False),
        ("Answer: Not equal", True),
        ("Answer: **no**", False),
        ("Final answer: No", False),
        ("Verdict: different", True),
        ("Not equal", True),
        ("Not the same", True),
        ("not different", False),
        ("Equal", False),
        ("They are the same instruction.", False),
        ("The two are identical", False),
        ("There is no difference", False),
        ("They differ.", True),
        ("True", True),
        ("false", False),
        ("The answer is yes.", True),
        ("I think yes because it adds more detail", True),
        ("**Yes** - it adds constraints", True),
        ("Yes, B asks for more; A is not the same", True),
        ("Yes or No: Yes", True),  # the question's format echoed before the answer
        ("Yes or No: no", False),
        ('{"answer": "yes"}', True),
        ('{"answer": "no"}', False),
        ('{"Answer": "Not equal"}', True),
        ('{"answer": true}', True),
        ('{"gain": false}', False),  # a single key, whatever its name
        ('{"answer": "yes", "reason": "no extra words"}', True),  # the answer key wins over the explanation
        ('```json\n{"answer": "no"}\n```', False),
        ('{"answer": "yes"', True),  # broken JSON falls back to reading the words
    ],
)
def test_parse_judgement_reads_verdicts(text, expected):
    assert parse_judgement(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "yes or no?",
        "Yes\nNo",
        "No. Yes.",
        "Yes, although no new topic",  # a strong opposite word: ambiguous, not guessed
        "maybe",
        "Not really",
        "Noting the request...",  # "no" only inside a word
        "I cannot decide",
        "",
        '{"answer": "maybe"}',
        "[1, 2]",
    ],
)
def test_parse_judgement_gives_none_when_undecided(text):
    assert parse_judgement(text) is None


# ---------------------------------------------------------------- grade


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7.0),
        ("7/10", 7.0),
        ("9 / 10", 9.0),
        ("10/10", 10.0),
        ("2 out of 10", 2.0),
        ("Score: 8 out of 10", 8.0),
        ("Grade: 7/10", 7.0),
        ("Score: 8/10 because it lists 3 things", 8.0),
        ("Score: **9**", 9.0),
        ("**8**", 8.0),
        ("score = 4", 4.0),
        ("8.", 8.0),
        ("7.5/10", 7.5),
        ("I'd give it a 6.", 6.0),
        ("Rating: seven", 7.0),
        ("On a scale of 1 to 10, I'd rate it 6.", 6.0),
        ("Rating: 7 (scale 1-10)", 7.0),
        ("Score (1-10): 7", 7.0),
        ("Score 1-10: 7", 7.0),  # the bare scale is not the grade
        ("Score 0-10: 7", 7.0),
        ("Rating 1 to 10: 5", 5.0),
        ("On a 1-10 scale: 7", 7.0),
        ("Out of 10, I'd give 7", 7.0),  # a denominator before the grade is skipped
        ('{"score": 9}', 9.0),
        ('{"rating": "8"}', 8.0),
        ('{"grade": 3.5}', 3.5),
    ],
)
def test_parse_grade_reads_grades(text, expected):
    assert parse_grade(text) == expected


@pytest.mark.parametrize(
    "text", ["11", "0", "-3", "Score: 12", '{"score": 11}', '{"score": true}', "none", "", "Score: 0/10"]
)
def test_parse_grade_out_of_range_or_missing_is_none(text):
    assert parse_grade(text) is None


def test_parse_grade_respects_custom_range():
    assert parse_grade("Score: 4", low=0, high=5) == 4.0
    assert parse_grade("Score: 7", low=0, high=5) is None
    assert parse_grade("0", low=0, high=5) == 0.0


# ---------------------------------------------------------------- rewrite


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write a poem about the sea.", ("Write a poem about the sea.", "")),
        ("Rewritten Prompt: Write a poem.", ("Write a poem.", "")),
        ("#Rewritten Prompt#:\nWrite a poem about X.", ("Write a poem about X.", "")),
        ("Here is the rewritten prompt: Write X.", ("Write X.", "")),
        ("Sure! Here is the rewritten instruction:\nWrite a poem.", ("Write a poem.", "")),
        ("Sure!\n\nRewritten instruction:\nWrite a sonnet.", ("Write a sonnet.", "")),
        ("Here's a harder version.\nWrite a poem with rhyme.", ("Write a poem with rhyme.", "")),
        ("**New instruction:** Do X", ("Do X", "")),
        ('Rewritten Instruction:\n"Write a haiku."', ("Write a haiku.", "")),
        ('"Write a poem."', ("Write a poem.", "")),
        ("“Smart quotes.”", ("Smart quotes.", "")),
        ("```\nWrite a poem.\n```", ("Write a poem.", "")),
        ("Write a poem.\n\nI hope this helps!", ("Write a poem.", "")),
        (
            "Sure! Here's the revised instruction:\n\n**Instruction:** Write a limerick.\n\n"
            "Let me know if you need more!",
            ("Write a limerick.", ""),
        ),
        ("Write a poem.\n\nInput:\n1, 2, 3", ("Write a poem.", "1, 2, 3")),
        ("Write code.\n**Input:** x = 1", ("Write code.", "x = 1")),
        ("Instruction: Sort numbers.\nInput: 3,1,2", ("Sort numbers.", "3,1,2")),
        ("#Rewritten Prompt#:\nSort.\n#Input#:\n3, 1", ("Sort.", "3, 1")),
        ("```\nSort these.\nInput: 1,2\n```", ("Sort these.", "1,2")),
        ('"Sort these."\n\nInput:\n1, 2', ("Sort these.", "1, 2")),
        # kept as they are: inner quotes, "input:" inside a line, code that belongs to the instruction
        ("Explain 'quotes' here", ("Explain 'quotes' here", "")),
        ("Write about input: output devices", ("Write about input: output devices", "")),
        ("Sure, I can explain this", ("Sure, I can explain this", "")),
        (
            "Write a function.\n\n```python\ndef f(): pass\n```",
            ("Write a function.\n\n```python\ndef f(): pass\n```", ""),
        ),
        ("", ("", "")),
        ("Input: only input", ("", "only input")),
    ],
)
def test_parse_rewrite(text, expected):
    assert parse_rewrite(text) == expected


def test_format_rewrite_round_trips_through_parse_rewrite():
    assert format_rewrite(" Sort these. ", " 3, 1 ") == "Sort these.\n\nInput:\n3, 1"
    assert format_rewrite("Sort these.", "   ") == "Sort these."
    for instruction, input in [("Sort these.", "3, 1"), ("Write a poem.", ""), ("Fix the bug.", "x = 1\ny = 2")]:
        assert parse_rewrite(format_rewrite(instruction, input)) == (instruction, input)


# ---------------------------------------------------------------- elimination rules


def test_is_refusal_short_apologies_and_declines():
    assert is_refusal("Sorry, I cannot help with that.")
    assert is_refusal("I cannot help with that.")
    assert is_refusal("I can’t do that")  # curly apostrophe
    assert is_refusal("I can not rewrite this.")
    assert is_refusal("Sure. However, I cannot rewrite this instruction.")
    assert is_refusal("As an AI, I do not have opinions.")
    assert is_refusal("As an AI language model I cannot")
    assert is_refusal("Write a note saying sorry")  # the paper's rule: "sorry" anywhere in a short text


def test_is_refusal_word_limit():
    assert is_refusal("Sorry" + " w" * 78)  # 79 words
    assert not is_refusal("Sorry" + " w" * 79)  # 80 words: not "under 80"
    long_answer = "Sorry for the wait! " + "Here is a detailed plan with steps and examples. " * 12
    assert not is_refusal(long_answer)
    assert is_refusal("Sorry " * 5, max_words=10) and not is_refusal("Sorry " * 5, max_words=5)


@pytest.mark.parametrize(
    "text",
    [
        "Write a poem about the sea.",
        "Explain why I cannot sleep after drinking coffee at night.",
        "Explain why I can’t log in after changing my password.",
        "As an AI researcher, describe how transformers use attention.",
        "Write about sorrow and loss.",  # "sorrow" is not "sorry"
        "",
    ],
)
def test_is_refusal_false_for_instructions(text):
    assert not is_refusal(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("   \n ", True),
        ("... !!! ?", True),
        ("The and of it.", True),
        ("Okay, so, it is what it is.", True),
        ("don't", True),
        ("The cat.", False),
        ("123", False),
        ("Write a poem.", False),
        ("Is it?", True),
    ],
)
def test_is_only_punct_or_stopwords(text, expected):
    assert is_only_punct_or_stopwords(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Rewritten Prompt: write a poem", True),
        ("#Given Prompt# write a poem", True),
        ("Write a poem. #Created Prompt#", True),
        ("the **Rewritten** **Prompt** asks for more", True),
        ("Rewritten   prompt with spaces", True),
        ("Unlike the original instruction, list three causes.", True),
        ("Write a prompt for an image model.", False),
        ("The prompt given to the model was short.", False),
        ("Rewrite this paragraph in plain English.", False),
    ],
)
def test_copies_template_words(text, expected):
    assert copies_template_words(text) is expected
