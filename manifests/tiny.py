"""Building blocks for the offline ``"tiny"`` models: tokenizers built in memory.

Every model-backed stage accepts ``model="tiny"``: a seeded, randomly initialised
miniature of the real architecture, so the whole pipeline runs offline on a CPU. The
miniatures' weights are built by each stage from a config; what they share lives here:
tokenizers of the real classes (CLIP BPE, T5 unigram, Qwen2 byte-level BPE) whose
vocabularies are built from the project's own words (concept names, scene words, JSON
punctuation), so that real prompts tokenize into real word pieces and every code path
(padding, truncation, special tokens, chat templates) runs as with the released models.

Outputs of models using these tokenizers are noise; they prove code paths, not quality.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import yaml
from transformers import CLIPTokenizer, Qwen2Tokenizer, T5Tokenizer

# Words the tiny vocabularies know besides the concept names and scene vocabulary.
_BASE_WORDS = """
a an the of and or with in on at to from by for is are it this that photo photograph picture image
image of one two three each every all some left right top bottom front back side near next
detect locate find outline output box boxes bounding json label labels object objects concept concepts
yes no answer only is it not which what where show please return list coordinates format
""".split()
JSON_PIECES = ['{"', '":', '"', '",', "[", "]", "{", "}", ",", ":", "bbox_2d", "label", "```", "json", " "]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat format of Qwen2.5-VL-Instruct (system prompt, image placeholders, generation prompt).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def project_words() -> tuple[str, ...]:
    """Lower-case words of the concept groups, the scene vocabulary and common prompt words."""
    words = set(_BASE_WORDS)
    for name in ("groups.yaml", "scenes.yaml"):
        text = resources.files("manifests").joinpath(name).read_text()
        words.update(re.findall(r"[a-z]+", yaml.safe_dump(yaml.safe_load(text)).lower()))
    return tuple(sorted(words))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to a symbol sequence, as the tokenizer does."""
    while len(symbols) > 1:
        pairs = [
            (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def _add_word(symbols: list[str], vocab: dict[str, int], ranks: dict[tuple[str, str], int]) -> None:
    """Append merges until BPE turns ``symbols`` into one token.

    Each new merge joins the first two pieces the existing merges leave, and ranks after
    all of them, so words added before keep their tokens.
    """
    pieces = _bpe(symbols, ranks)
    while len(pieces) > 1:
        ranks.setdefault((pieces[0], pieces[1]), len(ranks))
        vocab.setdefault(pieces[0] + pieces[1], len(vocab))
        pieces = _bpe(symbols, ranks)


@functools.cache
def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary holds every project word as one token.

    Special tokens: ``<|startoftext|>`` (bos) and ``<|endoftext|>`` (eos, pad); pass
    ``eos_token_id=tokenizer.eos_token_id`` to ``CLIPTextConfig``.
    """
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for char in byte_chars:
        vocab.setdefault(char, len(vocab))
    for char in byte_chars:
        vocab.setdefault(char + "</w>", len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in project_words():
        _add_word(list(word[:-1]) + [word[-1] + "</w>"], vocab, ranks)
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(ranks))
    tokenizer.model_max_length = model_max_length
    return tokenizer


@functools.cache
def tiny_t5_tokenizer(model_max_length: int = 256) -> T5Tokenizer:
    """A T5 unigram tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2) with every project word as a piece."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    for char in "▁abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-()[]{}_/":
        pieces.append((char, -10.0))
    for word in project_words():
        pieces.append(("▁" + word, -1.0))
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.model_max_length = model_max_length
    return tokenizer


@functools.cache
def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2 byte-level BPE tokenizer with Qwen2.5-VL's special tokens and chat template.

    Every project word (with and without a leading space), digits and the JSON pieces of
    grounding answers are single tokens; any other text falls back to bytes.
    """
    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for char in byte_chars.values():
        vocab.setdefault(char, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in list(project_words()) + JSON_PIECES:
        for form in (word, " " + word):
            _add_word([byte_chars[b] for b in form.encode()], vocab, ranks)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(ranks), errors="replace")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer
