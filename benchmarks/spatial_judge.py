"""SpatialRGPT-Bench's judge prompts, as the reference writes them: the prompt text is protocol.

Reference: SpatialRGPT ``scripts/srgpt/eval/evaluate_spatial_with_gpt4.py`` (``evaluate_quan_dir_question``,
``evaluate_quan_dist_question``, ``evaluate_qual_question``) and its few-shot example files
``scripts/srgpt/eval/prompt_templates/<category>.txt`` (every ``*_choice`` category reads ``choice.txt``),
reproduced character for character (leading and trailing newlines included) so that a judge sees what
gpt-4-turbo saw there. The reference sends each prompt as the user message after the system message
``JUDGE_SYSTEM``, with ``response_format={"type": "json_object"}``; ``question`` is the bench's ``text_q``,
``answer`` its ground-truth turn, ``response`` the model's answer.

One departure: the reference formats the filled prompt a second time (``prompt.format(question, answer,
response)``), which raises (a match failure there) or rewrites text when an answer holds braces; the prompts
here are filled once.
"""

from __future__ import annotations

from collections.abc import Mapping

from regionvlm.data.datasets import spatial_kind

JUDGE_SYSTEM = "You are a helpful assistant designed to output JSON."
_HEAD = "\nYou should help me to evaluate the response given the question and the correct answer.\n"
_TURN = "Your Turn:\nQuestion: {question}\nAnswer: {answer}\nResponse: {response}\n"

DIRECTION_PROMPT = _HEAD + (
    "You need to extract the direction of the correct answer and response.\n"
    "You should output two integers in clock directions, one for the answer, and one for the response.\n"
    "The output should be in JSON format.\n\n\n"
    "Example 1:\n"
    "Question: If you are at Region [0], where will you find Region [1]?\n"
    "Answer: Region [0] will find Region [1] around the 2 o'clock direction.\n"
    "Response: If you are at Region [0], you will find Region [1] around the 2 o'clock direction.\n"
    '"answer_direction": 2, "response_direction": 2\n\n'
    "Example 2:\n"
    "Question: If you are at Region [0], where will you find Region [1]?\n"
    "Answer: Region [0] will find Region [1] around the 12 o'clock direction.\n"
    "Response: If you are at Region [0], you will find Region [1] around the 11 o'clock direction.\n"
    '"answer_direction": 12, "response_direction": 11\n\n') + _TURN + "\n"

DISTANCE_PROMPT = _HEAD + (
    "You need to convert the distance of the correct answer and response to meters. The conversion factors are "
    "as follows: 1 inch = 0.0254 meters. 1 foot = 0.3048 meters. 1 centimeter (cm) = 0.01 meters.\n"
    "You should output two floats in meters, one for the answer, and one for the response.\n"
    "The output should be in JSON format.\n\n\n"
    "Example 1:\n"
    "Question: Measure the width of Region [0].?\n"
    "Answer: The width of Region [0] is 1.02 meters.\n"
    "Response: Region [0] is 2.17 meters wide.\n"
    '"answer_in_meters": 1.02, "response_in_meters": 2.17\n\n'
    "Example 2:\n"
    "Question: What is the height of Region [1]?\n"
    "Answer: The height of Region [1] is 10.0 inches.\n"
    "Response: It is 48.47 centimeters.\n"
    '"answer_in_meters": 0.25, "response_in_meters": 0.48\n\n'
    "Example 3:\n"
    "Question: What is the radius of Region [0]?\n"
    "Answer: Region [0] is 77.56 centimeters wide.\n"
    "Response: It is 35.9 inches wide.\n"
    '"answer_in_meters": 0.78, "response_in_meters": 0.91\n\n'
    "Example 4:\n"
    "Question: How far away is Region [0] from Region [1]?\n"
    "Answer: Region [0] and Region [1] are 11.4 meters apart.\n"
    "Response: 22.32 feet.\n"
    '"answer_in_meters": 11.4, "response_in_meters": 6.80\n\n') + _TURN + "\n"

QUALITATIVE_HEAD = _HEAD + (
    "To mark a response, you should output a single integer between 0 and 1.\n"
    "1 means that the response perfectly matches the answer.\n"
    "0 means that the response is completely different from the answer.\n"
    "The output should be in JSON format.\n\n")
QUALITATIVE_TAIL = "\n\n" + _TURN + "    "   # the reference's post_fix ends in its source's indentation


def examples_text(category: str, question: str) -> str | None:
    """The few-shot block of a qualitative category as the reference builds it (its example file, stripped, with
    ``{question}`` filled), or None for a category without a file (the reference then fails to match)."""
    examples = QUALITATIVE_EXAMPLES.get("choice" if "choice" in category else category)
    if examples is None:
        return None
    return "\n\n".join(
        f'Example {i}:\nQuestion: {question if q is None else q}\nAnswer: {a}\nResponse: {r}\n"your_mark": {m}'
        for i, (q, a, r, m) in enumerate(examples, 1))


def spatial_judge_prompt(qa_info: Mapping, question: str, answer: str, response: str) -> str | None:
    """The reference's judge prompt for one bench question (None: a qualitative category it has no examples
    for)."""
    fill = {"question": question, "answer": answer, "response": response}
    kind = spatial_kind(qa_info)
    if kind == "direction":
        return DIRECTION_PROMPT.format(**fill)
    if kind == "quantitative":
        return DISTANCE_PROMPT.format(**fill)
    examples = examples_text(str(qa_info.get("category", "")), question)
    return None if examples is None else QUALITATIVE_HEAD + examples + QUALITATIVE_TAIL.format(**fill)


# prompt_templates/<category>.txt: per example (question, or None for the file's "{question}"; answer; response;
# mark), rendered by examples_text
QUALITATIVE_EXAMPLES: dict[str, tuple[tuple[str | None, str, str, int], ...]] = {
    "above_predicate": (
        (None, "Yes, Region [0] is above Region [1].", "Indeed, Region [0] is positioned over Region [1].", 1),
        (None, "Correct, Region [0] is located above Region [1].", "Yes, Region [0] is above Region [1].", 1),
        (None, "Indeed, Region [0] is positioned over Region [1].", "Actually, Region [0] is below Region [1].", 0),
        (None, "Incorrect, Region [0] is not positioned above Region [1].", "Yes, Region [0] is above Region [1].", 0),
        (None,
         "Incorrect, Region [0] is not positioned above Region [1].",
         "Actually, Region [0] is below Region [1].", 1),
    ),
    "behind_predicate": (
        (None, "Yes, it is.", "Yes, Region [0] is further from the viewer.", 1),
        (None, "Yes, it is behind Region [1].", "Yes, Region [0] is behind Region [1].", 1),
        (None, "That is True.", "No, Region [0] is closer to the viewer.", 0),
        (None, "No, Region [1] is in front of Region [0].", "Yes, it is behind Region [1].", 0),
        (None, "That is False.", "No, it is in front of Region [1].", 1),
        (None, "No, Region [1] is in front of Region [0].", "No, Region [0] is closer to the viewer.", 1),
    ),
    "below_predicate": (
        (None, "Yes, Region [0] is below Region [1].", "Indeed, Region [0] is positioned under Region [1].", 1),
        (None, "Correct, Region [0] is located below Region [1].", "Yes, Region [0] is below Region [1].", 1),
        (None, "Indeed, Region [0] is positioned under Region [1].", "Actually, Region [0] is above Region [1].", 0),
        (None, "Incorrect, Region [0] is not positioned below Region [1].", "Yes, Region [0] is below Region [1].", 0),
        (None,
         "Incorrect, Region [0] is not positioned below Region [1].",
         "Actually, Region [0] is above Region [1].", 1),
    ),
    "big_predicate": (
        (None,
         "Yes, Region [0] is bigger than Region [1].",
         "Indeed, Region [0] has a larger size compared to Region [1].", 1),
        (None,
         "Correct, Region [0] is larger in size than Region [1].",
         "Yes, Region [0] is bigger than Region [1].", 1),
        (None,
         "Indeed, Region [0] has a larger size compared to Region [1].",
         "Actually, Region [0] might be smaller than Region [1].", 0),
        (None, "No, Region [0] is not bigger than Region [1].", "Yes, Region [0] is bigger than Region [1].", 0),
        (None,
         "No, Region [0] is not bigger than Region [1].",
         "Actually, Region [0] might be smaller than Region [1].", 1),
        (None,
         "Actually, Region [0] might be smaller than Region [1].",
         "Incorrect, Region [0] is not larger than Region [1].", 1),
    ),
    "choice": (
        ("Who is taller, Region [0] or Region [1]?",
         "With more height is Region [0].",
         "Standing taller between the two is Region [1].", 0),
        ("Between Region [0] and Region [1], which one appears on the right side from the viewer's perspective?",
         "From the viewer's perspective, Region [1] appears more on the right side.",
         "Region [1].", 1),
        ("Which is in front, Region [0] or Region [1]?",
         "Positioned in front is Region [1].",
         "Region [1] is more forward.", 1),
        ("Which is above, Region [0] or Region [1]?", "Region [1] is above.", "Region [0] is higher up.", 0),
    ),
    "front_predicate": (
        (None, "Yes, it is.", "Yes, Region [0] is closer to the viewer.", 1),
        (None, "Yes, it is in front of Region [1].", "Yes, Region [0] is in front of Region [1].", 1),
        (None, "That is True.", "No, Region [0] is further to the viewer.", 0),
        (None, "No, Region [0] is behind Region [1].", "Yes, it is in front of Region [1].", 0),
        (None, "That is False.", "No, it is behind Region [1].", 1),
        (None, "No, Region [0] is behind Region [1].", "No, Region [0] is further to the viewer.", 1),
    ),
    "left_predicate": (
        (None,
         "Yes, Region [0] is to the left of Region [1].",
         "Indeed, Region [0] is positioned on the left side of Region [1].", 1),
        (None,
         "Correct, you'll find Region [0] to the left of Region [1].",
         "Yes, Region [0] is to the left of Region [1].", 1),
        (None,
         "Indeed, Region [0] is positioned on the left side of Region [1].",
         "In fact, Region [0] is to the right of Region [1].", 0),
        (None,
         "Incorrect, Region [0] is not on the left side of Region [1].",
         "Correct, you'll find Region [0] to the left of Region [1].", 0),
        (None,
         "Incorrect, Region [0] is not on the left side of Region [1].",
         "In fact, Region [0] is to the right of Region [1].", 1),
    ),
    "right_predicate": (
        (None,
         "Yes, Region [0] is to the right of Region [1].",
         "Indeed, Region [0] is positioned on the right side of Region [1].", 1),
        (None,
         "Correct, you'll find Region [0] to the right of Region [1].",
         "Yes, Region [0] is to the right of Region [1].", 1),
        (None,
         "Indeed, Region [0] is positioned on the right side of Region [1].",
         "In fact, Region [0] is to the left of Region [1].", 0),
        (None,
         "Incorrect, Region [0] is not on the right side of Region [1].",
         "Correct, you'll find Region [0] to the right of Region [1].", 0),
        (None,
         "Incorrect, Region [0] is not on the right side of Region [1].",
         "In fact, Region [0] is to the left of Region [1].", 1),
    ),
    "short_predicate": (
        (None,
         "Yes, Region [0] is shorter than Region [1].",
         "Indeed, Region [0] has a lesser height compared to Region [1].", 1),
        (None, "Correct, Region [0] is not as tall as Region [1].", "Yes, Region [0] is shorter than Region [1].", 1),
        (None,
         "Indeed, Region [0] has a lesser height compared to Region [1].",
         "Incorrect, Region [0]'s height does not fall short of Region [1]'s.", 0),
        (None, "No, Region [0] is not shorter than Region [1].", "Yes, Region [0] is shorter than Region [1].", 0),
        (None,
         "No, Region [0] is not shorter than Region [1].",
         "Incorrect, Region [0]'s height does not fall short of Region [1]'s.", 1),
        (None,
         "Incorrect, Region [0]'s height does not fall short of Region [1]'s.",
         "In fact, Region [0] may be taller than Region [1].", 1),
    ),
    "small_predicate": (
        (None,
         "Yes, Region [0] is smaller than Region [1].",
         "Indeed, Region [0] has a smaller size compared to Region [1].", 1),
        (None,
         "Correct, Region [0] occupies less space than Region [1].",
         "Yes, Region [0] is smaller than Region [1].", 1),
        (None,
         "Indeed, Region [0] has a smaller size compared to Region [1].",
         "Incorrect, Region [0] is not smaller in size than Region [1].", 0),
        (None, "No, Region [0] is not smaller than Region [1].", "Yes, Region [0] is smaller than Region [1].", 0),
        (None,
         "No, Region [0] is not smaller than Region [1].",
         "Incorrect, Region [0] is not smaller in size than Region [1].", 1),
        (None,
         "Incorrect, Region [0] is not smaller in size than Region [1].",
         "Actually, Region [0] might be larger than Region [1].", 1),
    ),
    "tall_predicate": (
        (None,
         "Yes, Region [0] is taller than Region [1].",
         "Indeed, Region [0] has a greater height compared to Region [1].", 1),
        (None, "Correct, Region [0] is much taller as Region [1].", "Yes, Region [0] is taller than Region [1].", 1),
        (None,
         "Indeed, Region [0] has a greater height compared to Region [1].",
         "In fact, Region [0] may be shorter than Region [1].", 0),
        (None, "No, Region [0] is not taller than Region [1].", "Yes, Region [0] is taller than Region [1].", 0),
        (None,
         "No, Region [0] is not taller than Region [1].",
         "In fact, Region [0] may be shorter than Region [1].", 1),
        (None,
         "In fact, Region [0] may be shorter than Region [1].",
         "Incorrect, Region [0]'s height is not larger of Region [1]'s.", 1),
    ),
    "thin_predicate": (
        (None,
         "Yes, Region [0] is thinner than Region [1].",
         "Indeed, Region [0] has a lesser width compared to Region [1].", 1),
        (None,
         "Correct, Region [0]'s width is less than Region [1]'s.",
         "Yes, Region [0] is thinner than Region [1].", 1),
        (None,
         "Indeed, Region [0] has a lesser width compared to Region [1].",
         "Incorrect, Region [0]'s width is not less than Region [1]'s.", 0),
        (None, "No, Region [0] is not thinner than Region [1].", "Yes, Region [0] is thinner than Region [1].", 0),
        (None,
         "No, Region [0] is not thinner than Region [1].",
         "Incorrect, Region [0]'s width is not less than Region [1]'s.", 1),
        (None,
         "Incorrect, Region [0]'s width is not less than Region [1]'s.",
         "In fact, Region [0] might be wider than Region [1].", 1),
    ),
    "wide_predicate": (
        (None,
         "Yes, Region [0] is wider than Region [1].",
         "Indeed, Region [0] has a greater width compared to Region [1].", 1),
        (None,
         "Correct, the width of Region [0] exceeds that of Region [1].",
         "Yes, Region [0] is wider than Region [1].", 1),
        (None,
         "Indeed, Region [0] has a greater width compared to Region [1].",
         "In fact, Region [0] might be narrower than Region [1].", 0),
        (None, "No, Region [0] is not wider than Region [1].", "Yes, Region [0] is wider than Region [1].", 0),
        (None,
         "No, Region [0] is not wider than Region [1].",
         "In fact, Region [0] might be narrower than Region [1].", 1),
        (None,
         "In fact, Region [0] might be narrower than Region [1].",
         "Incorrect, Region [0]'s width does not surpass Region [1]'s.", 1),
    ),
}
