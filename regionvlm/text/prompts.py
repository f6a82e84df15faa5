"""Task-guided prompt templates (RGPT): a question phrasing plus a suffix that states the answer's scope.

RGPT appends the output scope to each question ("Answer the question using COCO-80 category names.", "Answer
the question using the template Region [x].") so one model can serve several region tasks without mixing their
answer formats. Each template has several phrasings: training samples one per call with the dataset's rng
(variety), evaluation uses the first (comparability). The first phrasing of the classification and REC prompts
is the RGPT paper's own wording; the caption prompts' wording and suffixes are ours (no source gives them).
``task_guidance=False`` drops the suffix (the ablation).

The parsers of the answers these prompts ask for live beside them: `parse_region_index` reads the REC
template's "Region [k]." (and what models write instead), `parse_yes_no` a yes/no answer.

``build(...)`` returns a conversation ``[{"from": "human", ...}, {"from": "gpt", ...}]``; the answer turn is
omitted when ``answer`` is None (pure inference). A benchmark evaluates a training dataset built with
``train: false``, so a model is asked in the first phrasing of the node it was trained with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from regionvlm.registry import PROMPTS


def region_tags(n: int, start: int = 1) -> str:
    """``<region1>, <region2>, …`` for n candidates."""
    return ", ".join(f"<region{k}>" for k in range(start, start + n))


class TaskPrompt:
    """Base: phrasings with ``{fields}``, a guidance suffix, and the ``<image>`` tag in front."""

    task = "generic"
    phrasings: tuple[str, ...] = ("{question}",)
    guidance = ""

    def __init__(self, task_guidance: bool = True, phrasings: Sequence[str] | None = None,
                 guidance: str | None = None, image_tag: bool = True):
        self.task_guidance = task_guidance
        if phrasings is not None:
            self.phrasings = tuple(phrasings)
        if guidance is not None:
            self.guidance = guidance
        self.image_tag = image_tag

    def question(self, rng: Any = None, **fields: Any) -> str:
        """One phrasing (sampled with ``rng`` — a `random.Random` or numpy Generator — else the first), filled
        with ``fields``, plus the guidance suffix when enabled."""
        if rng is None:
            text = self.phrasings[0]
        elif hasattr(rng, "integers"):
            text = self.phrasings[int(rng.integers(len(self.phrasings)))]
        else:
            text = self.phrasings[rng.randrange(len(self.phrasings))]
        text = text.format(**fields)
        guidance = self.guidance_text(**fields)
        if self.task_guidance and guidance:
            text = f"{text} {guidance}"
        return f"<image>\n{text}" if self.image_tag else text

    def guidance_text(self, **fields: Any) -> str:
        return self.guidance.format(**fields)

    def conversation(self, question: str, answer: str | None) -> list[dict]:
        conv = [{"from": "human", "value": question}]
        if answer is not None:
            conv.append({"from": "gpt", "value": answer})
        return conv

    def build(self, answer: str | None = None, rng: Any = None, **fields: Any) -> list[dict]:
        return self.conversation(self.question(rng, **fields), answer)

    def card_node(self, node: dict) -> dict:
        """The node that rebuilds this prompt exactly as it was built from ``node`` — with what its dataset gave
        it at build time written out (an export's card stores this: inference asks as training did)."""
        return dict(node)


class SingleRegionPrompt(TaskPrompt):
    """A question about one region, ``{region}`` in the phrasings (``<region1>`` by default)."""

    def build(self, region: int = 1, answer: str | None = None, rng: Any = None) -> list[dict]:
        return self.conversation(self.question(rng, region=f"<region{region}>"), answer)


@PROMPTS.register("region_classification")
class RegionClassificationPrompt(SingleRegionPrompt):
    """Region classification: "What is <region1>?" scoped to a vocabulary (named, listed, or free)."""

    task = "region_classification"
    phrasings = (
        "What category name best describes the region represented by {region}?",   # RGPT paper's wording
        "What is the category of {region}?",
        "What is {region}?",
        "What kind of object is {region}?",
        "Classify {region}.",
        "Can you tell me what {region} is?",
        "Name the object in {region}.",
    )

    def __init__(self, vocabulary: str | Sequence[str] | None = None, categories: Sequence[str] | None = None,
                 **kw: Any):
        """``vocabulary``: a name ("COCO-80" → "... using COCO-80 category names."), a list of names (listed
        in the suffix), ``"categories"`` (list the dataset's own category names, given at build time as
        ``categories``) or None ("... a single word or phrase.")."""
        super().__init__(**kw)
        if vocabulary == "categories":
            vocabulary = list(categories or [])
        self.vocabulary = vocabulary

    def card_node(self, node: dict) -> dict:
        """``vocabulary: categories`` written out as the dataset's names."""
        return {**node, "vocabulary": list(self.vocabulary)} if node.get("vocabulary") == "categories" else dict(node)

    def guidance_text(self, **fields: Any) -> str:
        v = self.vocabulary
        if isinstance(v, str):
            return f"Answer the question using {v} category names."
        if v:
            return f"Answer the question using one of these category names: {', '.join(v)}."
        return "Answer the question using a single word or phrase."


@PROMPTS.register("brief_caption")
class BriefCaptionPrompt(SingleRegionPrompt):
    """Brief region caption: a short phrase describing <region1>. The phrasings and the guidance suffix are ours
    (the RGPT paper gives no caption wording)."""

    task = "brief_caption"
    phrasings = (
        "Give a brief description of {region}.",
        "Describe {region} in a few words.",
        "What is in {region}? Describe it briefly.",
        "Write a short caption for {region}.",
    )
    guidance = "Answer the question using a short phrase."


@PROMPTS.register("sentence_caption")
class SentenceCaptionPrompt(BriefCaptionPrompt):
    """A one-sentence region description: the open question a chat model gets ("Describe <region1> in one
    sentence."), between the brief phrase and the detailed paragraph. Phrasings and suffix are ours."""

    task = "sentence_caption"
    phrasings = (
        "Describe {region} in one sentence.",
        "What can you tell me about {region}?",
        "Write one sentence about {region}.",
        "Tell me about {region}.",
    )
    guidance = "Answer the question with one full sentence."


@PROMPTS.register("detailed_caption")
class DetailedCaptionPrompt(BriefCaptionPrompt):
    """Detailed region caption: several sentences about <region1> in the context of the image (our phrasings and
    suffix; DAM asks "Describe the masked region in detail.")."""

    task = "detailed_caption"
    phrasings = (
        "Describe {region} in detail.",
        "Give a detailed description of {region}.",
        "What can you tell me about {region}? Please be detailed.",
        "Provide a thorough description of {region} in the context of the whole image.",
    )
    guidance = "Answer the question with a detailed description."


@PROMPTS.register("rec")
class ReferringExpressionPrompt(TaskPrompt):
    """Referring-expression comprehension over candidates <region1>…<regionN>; answer "Region [k]."."""

    task = "rec"
    phrasings = (
        "From the provided masks denoted by {candidates}, which one fits \"{expression}\"?",   # RGPT paper's wording
        "Which region does the text \"{expression}\" describe? Options: {candidates}.",
        "Find the region that matches \"{expression}\" among {candidates}.",
        "Here are some candidate regions: {candidates}. Which one is \"{expression}\"?",
        "Select the region referred to by \"{expression}\" from {candidates}.",
    )
    guidance = "Answer the question using the template Region [x]."
    negative_answer = "No corresponding options found."

    @staticmethod
    def answer_for(index: int | None) -> str:
        """1-based candidate index → "Region [k]."; None → the negative answer."""
        return ReferringExpressionPrompt.negative_answer if index is None else f"Region [{index}]."

    def build(self, expression: str, num_candidates: int, answer_index: int | None = None,
              rng: Any = None, with_answer: bool = True) -> list[dict]:
        q = self.question(rng, expression=expression, candidates=region_tags(num_candidates))
        return self.conversation(q, self.answer_for(answer_index) if with_answer else None)


_REGION_PATTERNS = (
    re.compile(r"region\s*\[\s*(\d+)\s*\]", re.IGNORECASE),   # the task-guided template "Region [2]"
    re.compile(r"<region(\d+)>", re.IGNORECASE),              # a model that echoes the placeholder
    re.compile(r"region\s*#?\s*(\d+)\b", re.IGNORECASE),       # "region 2"
)


def parse_region_index(text: str, num_candidates: int, one_based: bool = True) -> int | None:
    """0-based candidate index named by the answer ("Region [2]." → 1), or None when no valid index is found.
    The first match of the most specific pattern wins; out-of-range indices are unparseable."""
    for pattern in _REGION_PATTERNS:
        m = pattern.search(text)
        if m:
            k = int(m.group(1)) - (1 if one_based else 0)
            return k if 0 <= k < num_candidates else None
    return None


@PROMPTS.register("spatial_relation")
class SpatialRelationPrompt(TaskPrompt):
    """Spatial relation between two regions: where is <region1> relative to <region2>?"""

    task = "spatial_relation"
    phrasings = (
        "Where is {subject} relative to {object}?",
        "What is the spatial relation between {subject} and {object}?",
        "Describe the position of {subject} with respect to {object}.",
        "How is {subject} placed relative to {object}?",
    )

    def __init__(self, relations: Sequence[str] = ("left", "right", "above", "below"), **kw: Any):
        super().__init__(**kw)
        self.relations = list(relations)

    def guidance_text(self, **fields: Any) -> str:
        return f"Answer the question using one of: {', '.join(self.relations)}."

    def build(self, subject: int = 1, object: int = 2, answer: str | None = None, rng: Any = None) -> list[dict]:
        return self.conversation(self.question(rng, subject=f"<region{subject}>", object=f"<region{object}>"),
                                 answer)


@PROMPTS.register("yes_no")
class YesNoPrompt(TaskPrompt):
    """Yes/no question about the image (POPE): the question as given plus the short-answer scope."""

    task = "yes_no"
    phrasings = ("{question}",)
    guidance = "Answer the question using a single word or phrase."

    def build(self, question: str, answer: str | None = None, rng: Any = None) -> list[dict]:
        return self.conversation(self.question(rng, question=question), answer)


def parse_yes_no(text: str) -> str | None:
    """"yes"/"no" from the first word that is one (case-insensitive; "not", "isn't"… count as no), else None."""
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in ("yes", "no"):
            return w
        if w in ("not", "isn", "doesn", "aren"):
            return "no"
    return None


@PROMPTS.register("spatial_qa")
class SpatialQAPrompt(YesNoPrompt):
    """Free-form spatial question about regions (SpatialRGPT-Bench): the question as given plus a scope that
    depends on its kind — ``predicate`` (yes/no), ``choice`` (Region [x]), ``quantitative`` (number + unit) or
    ``direction`` (clock position). These suffixes are ours: SpatialRGPT-Bench asks its questions bare."""

    task = "spatial_qa"
    guidances: ClassVar[dict[str, str]] = {
        "predicate": "Answer the question with yes or no.",
        "choice": "Answer the question using the template Region [x].",
        "quantitative": "Answer the question with a number and a unit.",
        "direction": "Answer the question with a clock direction.",
    }

    def __init__(self, guidances: dict[str, str] | None = None, **kw: Any):
        super().__init__(**kw)
        if guidances is not None:
            self.guidances = {**self.guidances, **guidances}

    def guidance_text(self, kind: str = "predicate", **fields: Any) -> str:
        return self.guidances[kind]

    def build(self, question: str, kind: str = "predicate", answer: str | None = None,
              rng: Any = None) -> list[dict]:
        return self.conversation(self.question(rng, question=question, kind=kind), answer)
