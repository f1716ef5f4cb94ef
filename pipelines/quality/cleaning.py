"""C4's line-level cleaning (Raffel et al. 2020, as datatrove's C4QualityFilter does it), in one pass.

Each line is stripped and removed when it holds a word longer than `max_word_length`, ends without
terminal punctuation (only if `remove_no_terminal_punct`), has fewer than `min_words_per_line` words (in
scripts written without spaces, each character is a word), or mentions javascript or a
cookie/terms/privacy policy; Wikipedia-style citations ("[1]", "[edit]") are cut
out. The kept lines, joined by newlines, are the cleaned text that every later stage reads.

C4's document rules become signals here and decisions in the policy: lines containing "lorem ipsum",
lines containing "{", and the number of sentences in the kept lines. datatrove stops at the first such
line; here those lines are counted and otherwise cleaned like any other (so a policy without the rule
keeps them), which gives the same keep/drop whenever the rule is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datatrove.utils.text import TERMINAL_PUNCTUATION

from pipelines.config import CleaningConfig
from pipelines.quality.words import NO_SPACE_CHAR_RE, NO_SPACE_RANGES, has_no_space_script

CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_WITH_COOKIE = tuple(p for p in POLICY_SUBSTRINGS if "cookie" in p)
_WITHOUT_COOKIE = tuple(p for p in POLICY_SUBSTRINGS if "cookie" not in p)


def mentions_policy(lower: str) -> bool:
    """Whether a lowercase text holds one of POLICY_SUBSTRINGS (those with "cookie" are looked for only
    where "cookie" is: three scans of a text without any, not six)."""
    return any(p in lower for p in _WITHOUT_COOKIE) or (
        "cookie" in lower and any(p in lower for p in _WITH_COOKIE)
    )


# A sentence ends at a run of terminal punctuation followed, after closing quotes or brackets and a space
# (none needed after CJK full stops), by a word on the same line, and a period between a lower- and an
# uppercase letter ("her.I", split by spaCy's infix rule) ends one too. As in spaCy's English tokens, an
# ellipsis and the period of an initial ("J.", the last of "U.S.") or a title ("Dr.") end nothing; such
# ends are counted by NOT_AN_END_RE and subtracted. (Basic Multilingual Plane characters only: a
# character class with astral characters scans much slower. The expression starts with one character of
# the class, not a repeat, so that the regex engine jumps from one candidate to the next instead of
# trying a match at every character: twice as fast. No terminal character is a quote or a word character,
# so the possessive run never gives back what a shorter one would have matched.)
_TERMINAL = re.escape("".join(sorted(c for c in TERMINAL_PUNCTUATION if ord(c) < 0x10000)))
_AFTER = r"[\"'”’»)\]]*[^\S\n]+(?=\w)"
SENTENCE_END_RE = re.compile(
    rf"[{_TERMINAL}][{_TERMINAL}]*+(?:{_AFTER}|(?<=[。！？｡])(?=\w)|(?<=[a-z]\.)(?=[A-Z]))"
)
_TITLES = ("[A-Za-z]", "Mr|Ms|Dr|St|Jr|Sr|vs", "Mrs|Rev|Gen|Inc|Ltd", "Prof")  # by length
NOT_AN_END_RE = re.compile(
    r"\.(?:\.|" + "|".join(rf"(?<=(?<!\w)(?:{t})\.)" for t in _TITLES) + rf")[{_TERMINAL}]*{_AFTER}"
)


# In scripts written without spaces (Chinese, Japanese, Thai, ...) every character counts as a word
# (C4 counts whitespace-separated words, which would remove every line of such text).
NO_SPACE_WORD_RE = re.compile(f"[{NO_SPACE_RANGES}]|[^\\s{NO_SPACE_RANGES}]+")


@dataclass
class Cleaned:
    """The cleaned text and what the cleaning saw."""

    text: str
    lines_removed: int  # lines with text that were removed
    removed_text: str  # those lines as they were (stripped), joined by newlines
    lorem_ipsum_lines: int
    curly_bracket_lines: int
    sentences: int
    cited_before: str = ""  # kept lines that lost a citation, before and after, joined by newlines
    cited_after: str = ""


def clean(
    text: str,
    config: CleaningConfig | None = None,
    lines: list[str] | None = None,
    no_space_script: bool | None = None,
) -> Cleaned:
    """Apply C4's line cleaning to `text` (`lines`: text.splitlines(), and `no_space_script`: whether it
    has a character of a script without spaces, where the caller already knows them)."""
    cfg = config or CleaningConfig()
    lower = text.lower()
    check_lorem = "lorem ipsum" in lower
    check_js = cfg.remove_javascript_lines and "javascript" in lower
    check_curly = "{" in text
    check_policy = cfg.remove_policy_lines and mentions_policy(lower)
    max_length = cfg.max_word_length or len(text) + 1
    check_cite = cfg.remove_citations and "[" in text and CITATION_RE.search(text) is not None
    per_line_text_checks = check_lorem or check_js or check_curly or check_policy
    min_words = cfg.min_words_per_line
    if no_space_script is None:
        no_space_script = not text.isascii() and has_no_space_script(text)
    no_terminal_punct = cfg.remove_no_terminal_punct
    kept: list[str] = []
    removed: list[str] = []
    cited: list[tuple[str, str]] = []
    keep, remove = kept.append, removed.append
    lorem = curly = 0
    for raw in text.splitlines() if lines is None else lines:
        line = original = raw.strip()
        if len(line) > max_length:  # only a line longer than the limit can hold a word that is
            words = line.split()
            if max(map(len, words)) > max_length:
                remove(original)
                continue
            n_words = len(words)
        elif min_words:
            n_words = len(line.split(None, min_words - 1)) if line else 0
            if n_words < min_words and no_space_script and NO_SPACE_CHAR_RE.search(line):
                n_words = len(NO_SPACE_WORD_RE.findall(line))
        else:
            n_words = 0
        if check_cite and "[" in line:  # every citation starts with "["
            line = CITATION_RE.sub("", line)
        if no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
            if original:
                remove(original)
            continue
        if n_words < min_words:
            if original:
                remove(original)
            continue
        if per_line_text_checks:
            line_lower = line.lower()
            if check_lorem and "lorem ipsum" in line_lower:
                lorem += 1
            if check_js and "javascript" in line_lower:
                remove(original)
                continue
            if check_curly and "{" in line:
                curly += 1
            if check_policy and mentions_policy(line_lower):
                remove(original)
                continue
        if line is not original and line != original:
            cited.append((original, line))
        keep(line)
    cleaned = "\n".join(kept).strip()
    sentences = len(kept) + count_sentence_ends(cleaned) if cleaned else 0
    before, after = ("\n".join(lines) for lines in zip(*cited, strict=True)) if cited else ("", "")
    return Cleaned(cleaned, len(removed), "\n".join(removed), lorem, curly, sentences, before, after)


def count_sentence_ends(text: str) -> int:
    """Sentence ends followed by more text on the same line (spaCy's sentencizer on English tokens)."""
    return len(SENTENCE_END_RE.findall(text)) - len(NOT_AN_END_RE.findall(text))
