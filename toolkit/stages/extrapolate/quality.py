"""Parsing LLM list output and keeping only items worth rendering.

Base models drift from the format; everything here is tolerant of that and never raises on
model output: a line that cannot be used is simply not kept (and counted).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
# Control tokens a small model sometimes emits as text (Gemma's <start_of_image>, <eos>, ...): cut there.
_SPECIAL = re.compile(r"<[^<>\s]{2,40}>")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_EMPHASIS = re.compile(r"(?<!\w)(\*\*|__|\*|_)(\S(?:.*?\S)?)\1(?!\w)")  # not snake_case_words
_ARTICLES = {"a", "an", "the"}
# Words that add nothing when judging whether a domain merely restates the class.
_FILLER = {"of", "in", "on", "with", "and", "style", "image", "picture", "depiction", "view", "version"}


@dataclass(frozen=True)
class Limits:
    max_item_words: int = 6
    max_item_chars: int = 48
    min_text_words: int = 3
    max_text_chars: int = 240
    # a prompt's tokens as Stable Diffusion's text encoders count them (OpenAI CLIP's tokenizer, start and end
    # included: clip_tokens.py); the pipelines cut what is over
    max_prompt_tokens: int = 77


def words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("_", " ").replace("-", " ")
    return re.findall(r"[a-z0-9]+", text)


def stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def norm_key(text: str) -> str:
    """Key for exact de-duplication: case, punctuation, articles and plurals ignored."""
    return " ".join(stem(w) for w in words(text) if w not in _ARTICLES)


def _content(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w not in _ARTICLES and w not in _FILLER}


def _related(a: str, b: str) -> bool:
    """photo ~ photograph ~ photographic; sketch ~ sketched: a shared 5-letter start or equality."""
    return a == b or (len(a) >= 5 and len(b) >= 5 and a[:5] == b[:5])


def _plain(text: str) -> str:
    """Markdown emphasis and code marks off an item or text (`**watercolor**`, `_x_`, `` `x` ``)."""
    text = _EMPHASIS.sub(r"\2", text)
    return text.replace("`", "").strip()


def parse_lines(text: str, truncated: bool) -> list[tuple[str, str | None]]:
    """`- item | text` lines → (item, text or None). A final line cut off by max_tokens is dropped. A reasoning
    model's `<think>...</think>` span is not part of the answer (an unclosed one is all there is: nothing)."""
    text = _THINK.sub("", text)
    if "<think>" in text:
        return []
    lines = text.split("\n")
    if truncated and lines:
        lines = lines[:-1]
    out = []
    for line in lines:
        line = _SPECIAL.split(line)[0]
        line = _BULLET.sub("", line).strip().strip('"').strip()
        if not line:
            continue
        item, _, rest = line.partition("|")
        item = _plain(item).strip().strip(".:;,").strip()
        rest = _plain(rest).strip().strip('"').strip() or None
        if item:
            out.append((item, rest))
    return out


def _has_word(ws: list[str]) -> bool:
    """At least one real word: rejects '3D', '1930s', '42' and other non-answers."""
    return any(w.isalpha() and len(w) >= 3 for w in ws)


def check_domain(domain: str, prompt: str | None, class_words: set[str], avoid: list[str],
                 limits: Limits) -> str | None:
    """The reason to reject a generated domain, or None if it is usable."""
    dw = words(domain)
    if not dw or len(dw) > limits.max_item_words or len(domain) > limits.max_item_chars:
        return "length"
    if not _has_word(dw):
        return "not a word"
    content = _content(domain)
    if not content or content & class_words:
        return "restates class"
    for ex in avoid:
        if any(_related(c, e) for c in content for e in _content(ex)):
            return "excluded domain"
    if prompt is not None and len(prompt) > limits.max_text_chars:
        return "length"
    return check_prompt(prompt, limits)


def check_prompt(prompt: str | None, limits: Limits) -> str | None:
    """'prompt tokens' if the text encoder would cut the prompt (over 77 CLIP tokens), else None."""
    from .clip_tokens import count

    return "prompt tokens" if prompt is not None and count(prompt) > limits.max_prompt_tokens else None


def compose_prompt(domain: str, prompt: str | None, class_phrase: str, class_words: set[str],
                   foreign: set[str] = frozenset()) -> str:
    """The model's prompt if it names the class and no other subject it was shown (a few-shot example
    leaking in); otherwise a plain one built from the domain."""
    if prompt:
        content = _content(prompt)
        if class_words & content and not (content & (foreign - class_words)):
            return prompt
    return f"a {class_phrase}, {domain}"


def near_duplicate(item: str, kept: list[str], exact_words: bool = False) -> bool:
    """'3d printed' vs '3d printed plastic': every content word of one matches a word of the other.

    Domains match words by a shared 5-letter start (photo ~ photograph); class names only by equal
    (stemmed) words, since fine-grained names share starts and differ in what follows (Blackburnian /
    Blackpoll warbler, Common yellowthroat / yellowlegs are four species)."""
    related = (lambda x, y: x == y) if exact_words else _related
    a = _content(item)
    for other in kept:
        b = _content(other)
        small, large = (a, b) if len(a) <= len(b) else (b, a)
        if small and all(any(related(w, v) for v in large) for w in small):
            return True
    return False


def check_class(name: str, description: str | None, taken: set[str], limits: Limits) -> str | None:
    if not words(name) or len(words(name)) > limits.max_item_words or len(name) > limits.max_item_chars:
        return "length"
    if not _has_word(words(name)):
        return "not a word"
    if norm_key(name) in taken:
        return "duplicate"
    if (description is None or len(words(description)) < limits.min_text_words
            or len(description) > limits.max_text_chars):
        return "description length"
    return None


def check_group(name: str, realm: str, limits: Limits) -> str | None:
    if not words(name) or len(words(name)) > limits.max_item_words:
        return "length"
    if not _has_word(words(name)):
        return "not a word"
    if norm_key(name) == norm_key(realm):
        return "restates realm"
    return None
