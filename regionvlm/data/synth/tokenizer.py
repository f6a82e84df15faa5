"""The tiny preset's tokenizer: a byte-level BPE trained offline on every text the synthetic set and the task
prompts can produce (`regionvlm data tokenizer`). Not the LLM-side `regionvlm.plugins.llms.build_tokenizer`,
which loads a model's tokenizer and adds the placeholder tokens."""

from __future__ import annotations

import itertools
from pathlib import Path

from regionvlm.data.synth.scenes import COLOURS, PATTERNS, RELATIONS, SHAPES


def corpus_texts() -> list[str]:
    """Texts the tiny tokenizer is trained on: every phrase the synthetic set can produce, every prompt
    phrasing and guidance, and the chat templates' words."""
    from regionvlm.text import prompts
    from regionvlm.text.templates import VICUNA_SYSTEM

    texts = [VICUNA_SYSTEM, "USER: ASSISTANT:", "Describe the image briefly.", "There are 2 3 4 5 6 objects:",
             "Is there a in the image? yes no", "Where is relative to? left right above below",
             "Region [1]. Region [2]. Region [3]. Region [4]. Region [5]. Region [6].",
             prompts.ReferringExpressionPrompt.negative_answer]
    for shape, colour, pattern in itertools.product(SHAPES, COLOURS, PATTERNS):
        for size_word in ("small ", "", "large "):
            texts.append(f"a {size_word}{pattern} {colour} {shape}")
        for rel in RELATIONS:
            texts.append(f"the {pattern} {colour} {shape} {rel} the {colour} {shape}")
    for cls in vars(prompts).values():
        if isinstance(cls, type) and issubclass(cls, prompts.TaskPrompt):
            texts.extend(cls.phrasings)
            texts.append(cls.guidance)
            texts.extend(getattr(cls, "guidances", {}).values())
    texts += [f"Answer the question using {v} category names." for v in ("COCO-80", "the")]
    return texts


def train_tiny_tokenizer(out_dir: str | Path, texts: list[str] | None = None, vocab_size: int = 1024):
    """Train a byte-level BPE on ``texts`` (default `corpus_texts`) and save it as a transformers
    ``PreTrainedTokenizerFast`` (``save_pretrained``) with ``<s>``, ``</s>``, ``<pad>``, ``<unk>`` and the image
    and region placeholder tokens. Byte-level: any text tokenises, no unknowns. Returns the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from regionvlm.tokens import SPECIAL_TOKENS

    texts = corpus_texts() if texts is None else list(texts)
    specials = ["<unk>", "<s>", "</s>", "<pad>", *SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # repeat the corpus so that frequent chat words merge before rare ones
    tok.train_from_iterator(texts * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=list(SPECIAL_TOKENS),
                                   model_max_length=2048, clean_up_tokenization_spaces=False)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast
