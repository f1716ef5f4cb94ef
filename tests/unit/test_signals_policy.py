"""Signals on small real texts against values worked out by hand, and the keep/drop policy over them."""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_top_duplicate,
    get_n_grams,
)
from datatrove.utils.text import TERMINAL_PUNCTUATION
from shared_data import SHARED_DATA

from pipelines.quality import cleaning, repetition, signals, words
from pipelines.quality.policy import LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE, Policy, load_policy
from pipelines.stages.signals import signals_table

SHARED = SHARED_DATA
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"

# A Tale of Two Cities, first sentence: 60 words, 9 commas and a period.
ENGLISH = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair."
)
GERMAN = (
    "Die Würde des Menschen ist unantastbar. Sie zu achten und zu schützen ist Verpflichtung aller "
    "staatlichen Gewalt. Das Deutsche Volk bekennt sich darum zu unverletzlichen und unveräußerlichen "
    "Menschenrechten als Grundlage jeder menschlichen Gemeinschaft, des Friedens und der Gerechtigkeit "
    "in der Welt."
)
# Article 1 of the Universal Declaration of Human Rights in Chinese.
CHINESE = "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。"


# ------------------------------------------------------------------------------------------ words


def test_split_follows_spacys_english_tokens() -> None:
    text = (
        "Mr. Smith's cat—don't pay 3.50 or 1,000 at 10:30... It's U.S. law -- cannot see https://x.org/a?b=1."
    )
    assert words.split(text) == [
        "Mr", ".", "Smith", "'s", "cat", "—", "don", "'t", "pay", "3.50", "or", "1,000", "at", "10:30",
        "...", "It", "'s", "U.S", ".", "law", "--", "cannot", "see", "https", ":", "/", "/", "x.org", "/",
        "a?b", "=", "1", ".",
    ]  # fmt: skip
    # counted as spaCy does: "Mr." and "U.S." keep their period, "cannot" is two words, the URL (9 pieces)
    # is one. (spaCy itself says 23: after the dash it leaves "don't" whole.)
    assert words.count(text) == 33 - 2 + 1 - 8
    # punctuation spaCy has no infix rule for stays inside the word; hyphens and "a/b" split
    assert words.split("note;[1] Ross.--_Dublin well-known and/or") == [
        "note;[1", "]", "Ross.--_Dublin", "well", "-", "known", "and", "/", "or",
    ]  # fmt: skip


def test_the_forms_of_the_split_agree_where_they_are_used() -> None:
    # \x1c-\x1f are whitespace to str.isspace and Unicode \s, as are \xa0 and \u3000
    text = "It's U.S. law\x1cand\x1fthat -- note;[1] x_y 3.50... o'clock @me a.B her.I e.g. 1,000:"
    assert words.kind_of(text) == "ascii"
    tokens = words.token_re("ascii").findall(text)
    assert "and" in tokens and "that" in tokens
    for kind in ("bmp", "unicode", "full"):
        assert words.token_re(kind).findall(text) == tokens, kind
    # the "bmp" form's explicit classes equal Unicode's categories on any text of the BMP
    rng = random.Random(0)
    pool = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    common = list("  \n\t.,;:'’-_@/aZ9½²٣\xa0\u3000\u2028")
    for _ in range(300):
        sample = "".join(rng.choice(common if rng.random() < 0.5 else pool) for _ in range(80))
        assert words.token_re("bmp").findall(sample) == words.token_re("unicode").findall(sample), sample
    assert words.kind_of("naïve") == "bmp" and words.kind_of("cafe\u0301") == "full"
    assert words.kind_of("ok 😀") == "unicode" and words.kind_of("😀 cafe\u0301") == "full"
    assert words.kind_of("😀 中文") == "full" and words.kind_of("𠀀") == "full"


def test_split_scripts_without_spaces_and_combining_marks() -> None:
    assert words.split("中文字符。日本語です") == ["中", "文", "字", "符", "。", "日", "本", "語", "で", "す"]
    assert words.split("ภาษาไทย") == ["ภ", "า", "ษ", "า", "ไ", "ท", "ย"]
    assert words.split("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs stay inside the word
    assert words.split("cafe\u0301 au lait") == ["cafe\u0301", "au", "lait"]


# ------------------------------------------------------------------------------------------ Gopher


def test_gopher_quality_by_hand() -> None:
    s = signals.compute(ENGLISH)
    assert s["n_words_total"] == 70 and s["word_count"] == 60  # the 10 punctuation marks are not words
    letters = sum(len(w) for w in ENGLISH.replace(",", "").replace(".", "").split())
    assert s["mean_word_length"] == pytest.approx(letters / 60)
    assert s["alpha_word_fraction"] == pytest.approx(60 / 70)
    # "the" and "of" (Gopher's list; "It" does not count, datatrove compares case-sensitively)
    assert s["gopher_stop_word_count"] == 2 and s["stop_word_count"] == 2
    assert s["hash_word_ratio"] == 0.0 and s["bullet_line_ratio"] == 0.0
    assert s["lang"] == "en" and s["lang_score"] > 0.9
    assert s["n_chars"] == len(ENGLISH) and s["n_lines"] == 1


def test_symbol_and_line_ratios_by_hand() -> None:
    s = signals.compute("#tag #tag words here... and more … end")
    # 11 tokens: # tag # tag words here ... and more … end
    assert s["n_words_total"] == 11 and s["word_count"] == 7
    assert s["hash_word_ratio"] == pytest.approx(2 / 11)
    assert s["ellipsis_word_ratio"] == pytest.approx(2 / 11)
    assert s["symbol_word_ratio"] == pytest.approx(2 / 11)
    s = signals.compute("- milk\n• eggs, two dozen\nplain text here...\n  - flour\nwait…")
    assert s["bullet_line_ratio"] == pytest.approx(3 / 5)
    assert s["ellipsis_line_ratio"] == pytest.approx(2 / 5)
    s = signals.compute("- milk\r\n- eggs\r\nand bread...\r\n")  # other line breaks take the per-line path
    assert s["bullet_line_ratio"] == pytest.approx(2 / 3) and s["ellipsis_line_ratio"] == pytest.approx(1 / 3)


def test_bullet_and_ellipsis_lines_match_the_per_line_definition() -> None:
    # datatrove's: lstrip / rstrip each line of str.splitlines(); the "\n" fast path must agree, with
    # lines indented by any whitespace and with every line break splitlines knows
    rng = random.Random(1)
    pieces = [
        "- a",
        "• b",
        " - c",
        "\xa0- d",
        "\u3000• e",
        "text...",
        "x …",
        "plain",
        "",
        "\t-f",
        "...\r",
        "y",
    ]
    breaks = ["\n", "\r\n", "\n\n", "\r", "\x0c", "\u2028", "\x85"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) + rng.choice(breaks[:2] if rng.random() < 0.7 else breaks)
                       for _ in range(rng.randint(1, 8)))  # fmt: skip
        text = text.rstrip() if rng.random() < 0.3 else text
        lines = text.splitlines()
        s = signals.gopher_quality(text, words.split(text), lines, "en")
        if not lines:
            continue
        bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
        ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
        assert s["bullet_line_ratio"] == bullets / len(lines), repr(text)
        assert s["ellipsis_line_ratio"] == ellipses / len(lines), repr(text)


def test_stop_words_per_language() -> None:
    s = signals.compute(GERMAN)
    assert s["lang"] == "de"
    assert s["stop_word_count"] >= 8  # die, des, ist, sie, zu, und, der, ...
    assert s["gopher_stop_word_count"] == 0  # no English stop word
    zh = signals.compute(CHINESE)
    assert zh["lang"] == "zh"
    # found as substrings (Chinese has no spaces): 和, 上, 他们, 并, 以, 的, ...
    assert zh["stop_word_count"] >= 5
    assert signals.stop_words("xx") == frozenset()
    assert signals.count_stop_words(["one"], "one", "xx") is None  # no list: null, never 0


def test_repetition_by_hand() -> None:
    menu = "Home\nNews\nHome\nContact\n\nHome\nNews"  # 33 characters
    s = signals.compute(menu)
    assert s["dup_line_fraction"] == 0.5  # Home twice more, News once more, of 6 lines
    assert s["dup_line_char_fraction"] == pytest.approx(12 / 33)
    assert s["dup_para_fraction"] == 0.0
    assert s["top_2gram_char_fraction"] == pytest.approx(2 * len("Home News") / 33)
    assert s["top_3gram_char_fraction"] == pytest.approx(len("Home News Home") / 33)  # all once: the first
    assert s["top_4gram_char_fraction"] == pytest.approx(len("Home News Home Contact") / 33)
    assert s["dup_5gram_char_fraction"] == 0.0
    s = signals.compute("One two.\n\nOne two.\n\nThree.")
    assert s["dup_para_fraction"] == pytest.approx(1 / 3)
    assert s["dup_para_char_fraction"] == pytest.approx(
        len("One two.") / len("One two.\n\nOne two.\n\nThree.")
    )


def _datatrove_ngram_fractions(tokens: list[str], length: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for n in repetition.TOP_NGRAMS:
        grams = get_n_grams(tokens, n)
        out[f"top_{n}gram_char_fraction"] = find_top_duplicate(grams) / length if grams else None
    for n in repetition.DUP_NGRAMS:
        out[f"dup_{n}gram_char_fraction"] = find_all_duplicate(tokens, n) / length
    return out


def test_ngram_signals_equal_datatrove_functions() -> None:
    text = SHAKESPEARE.read_text()[:30_000]
    rng = random.Random(0)
    chorus = ["and", "the", "rain", "it", "raineth", "every", "day"]
    cases = [
        words.split(text),
        words.split(text)[:1500] * 3,
        [rng.choice(chorus) for _ in range(4000)],
        [f"w{rng.randrange(3000)}" for _ in range(6000)],  # sparse repeats, past the bucket threshold
        ["a"] * 7,
        # CPython's hash() of '祭' equals that of 'my' (the same two bytes): they must stay two words
        [rng.choice(["祭", "my", "so", "祭", "is"]) for _ in range(300)],
    ]
    assert hash("祭") == hash("my")  # why word_hashes mixes in the length
    for tokens in cases:
        length = sum(map(len, tokens)) + len(tokens)
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        with warnings.catch_warnings():  # the hashes wrap modulo 2**64 without a word
            warnings.simplefilter("error")
            hashes = repetition.word_hashes(tokens, lengths)
            ours = repetition.ngram_signals(hashes, lengths, length)
        theirs = _datatrove_ngram_fractions(tokens, length)
        assert ours == pytest.approx(theirs), len(tokens)


# ------------------------------------------------------------------------------------------ C4


PAGE = (
    "Home\n"
    "Cookie settings: this site uses cookies to improve your experience.\n"
    "Enable JavaScript to view the comments on this page.\n"
    "  The committee met on Tuesday to discuss the budget.[1] It approved the plan.  \n"
    "Mr. Smith said the vote was close. Nobody expected it.\n"
    "Short line"
)


def test_c4_line_cleaning_by_hand() -> None:
    cleaned = cleaning.clean(PAGE)
    assert cleaned.text == (
        "The committee met on Tuesday to discuss the budget. It approved the plan.\n"
        "Mr. Smith said the vote was close. Nobody expected it."
    )
    assert cleaned.lines_removed == 4  # Home, the cookie line, the JavaScript line, "Short line"
    assert cleaned.removed_text.splitlines()[0] == "Home"
    assert cleaned.sentences == 4  # "Mr." ends no sentence
    s = signals.compute(PAGE)
    assert s["c4_lines_removed"] == 4 and s["c4_sentence_count"] == 4
    assert s["clean_chars"] == len(cleaned.text)
    # FineWeb's words of the cleaned text, counted from the raw words less removed lines and citations
    assert s["fineweb_newline_ratio"] == pytest.approx(1 / words.count(cleaned.text))
    strict = cleaning.clean(
        PAGE + "\nA line without a full stop", cleaning.CleaningConfig(remove_no_terminal_punct=True)
    )
    assert strict.lines_removed == 5


def test_c4_document_signals() -> None:
    text = "Lorem ipsum dolor sit amet, consectetur.\nfunction f() { return 1; } is code\nA third line here."
    s = signals.compute(text)
    assert s["c4_lorem_ipsum_lines"] == 1 and s["c4_curly_bracket_lines"] == 1
    assert (
        cleaning.count_sentence_ends("A. Lincoln met J. R. R. Tolkien. He said e.g. this... and that?! Yes.")
        == 2
    )
    # C4 counts whitespace-separated words; in Chinese every character counts, so its lines stay
    assert cleaning.clean(CHINESE).text == CHINESE
    assert cleaning.clean(CHINESE).sentences == 2  # "。" ends a sentence without a following space
    assert cleaning.count_sentence_ends('Wait?!" He left... Then.Now "Go." she said. a.B') == 5


def test_sentence_end_run_is_possessive_safely() -> None:
    # SENTENCE_END_RE takes a run of terminal punctuation without giving any back: right only while no
    # terminal character could start what follows a run (a closing quote, a space, a word character)
    after = "\"'”’»)]"
    assert not [c for c in TERMINAL_PUNCTUATION if c in after or c.isspace() or re.match(r"\w", c)]


# ------------------------------------------------------------------------------------------ FineWeb


def test_fineweb_by_hand() -> None:
    text = "The cat sat on the mat.\nA short line here\nThe cat sat on the mat."  # 65 chars, 18 tokens
    s = signals.compute(text)
    assert s["fineweb_line_punct_ratio"] == pytest.approx(2 / 3)
    assert s["fineweb_short_line_ratio"] == 1.0  # every line has at most 30 characters
    assert s["fineweb_dup_line_char_ratio"] == pytest.approx(23 / 63)
    assert s["fineweb_newline_ratio"] == pytest.approx(2 / 18)
    # with lines removed by the cleaning, words are counted on the cleaned text
    s = signals.compute("Menu\n" + text)
    assert s["fineweb_newline_ratio"] == pytest.approx(2 / 18) and s["c4_lines_removed"] == 1


def test_real_book_text() -> None:
    text = SHAKESPEARE.read_text()[:20_000]
    s = signals.compute(text)
    assert s["lang"] == "en"
    assert s["word_count"] > 3_000
    assert s["n_lines"] == len(text.splitlines())
    assert 0 < s["c4_lines_removed"] < s["n_lines"]  # speaker names ("MENENIUS:") are one-word lines


def test_empty_and_wordless_documents_get_nulls() -> None:
    for text in ("", "   \n\t "):
        s = signals.compute(text)
        assert s["word_count"] == 0 and s["mean_word_length"] is None and s["hash_word_ratio"] is None
        assert s["clean_chars"] == 0 and s["c4_sentence_count"] == 0 and s["fineweb_line_punct_ratio"] is None
        assert s["lang"] == "und" and s["lang_score"] == 0.0
    s = signals.compute("!!! ??? ---")  # three "words" for C4, no word for Gopher
    assert s["word_count"] == 0 and s["mean_word_length"] is None and s["alpha_word_fraction"] == 0.0
    assert s["clean_chars"] == 11 and s["fineweb_line_punct_ratio"] == 0.0


# ------------------------------------------------------------------------------------------ policy


def _table(rows: list[dict]) -> pa.Table:
    return signals_table(pa.array([str(i) for i in range(len(rows))]), rows)


def test_policy_names_every_broken_rule() -> None:
    good = signals.compute(ENGLISH * 2)
    short = signals.compute("Buy now. Cheap pills!!! #win #win #win")
    german = signals.compute(GERMAN + " " + GERMAN)
    policy = Policy.model_validate(
        {
            "language": {"allow": ["en"], "min_confidence": 0.5},
            "rules": [
                {"name": "gopher_min_words", "signal": "word_count", "min": 50},
                {"name": "gopher_hash_ratio", "signal": "hash_word_ratio", "max": 0.1},
                {"name": "gopher_stop_words", "signal": "stop_word_count", "min": 2},
            ],
        }
    )
    out = policy.apply(_table([good, short, german]))
    assert out.column("keep").to_pylist() == [True, False, False]
    reasons = out.column("reasons").to_pylist()
    assert reasons[0] == []
    assert reasons[1] == ["gopher_min_words", "gopher_hash_ratio", "gopher_stop_words"]
    assert reasons[2] == [LANG_NOT_ALLOWED]


def test_null_signal_never_fires() -> None:
    row = signals.compute(ENGLISH * 2)
    row["stop_word_count"] = None
    policy = Policy.model_validate({"rules": [{"name": "stops", "signal": "stop_word_count", "min": 2}]})
    assert policy.apply(_table([row])).column("keep").to_pylist() == [True]


def test_low_confidence_rule() -> None:
    row = signals.compute(ENGLISH)
    row["lang_score"] = 0.2
    policy = Policy.model_validate({"language": {"min_confidence": 0.5}})
    assert policy.apply(_table([row])).column("reasons").to_pylist() == [[LOW_LANG_CONFIDENCE]]


def test_language_overrides_and_rule_languages() -> None:
    english, chinese = signals.compute(ENGLISH), signals.compute(CHINESE * 3)
    assert chinese["mean_word_length"] < 3  # one word per character
    rules = [
        {"name": "gopher_mean_word_length", "signal": "mean_word_length", "min": 3, "max": 10},
        {"name": "gopher_min_words", "signal": "word_count", "min": 50},
        {"name": "english_only", "signal": "n_chars", "max": 10, "languages": ["en"]},
    ]
    plain = Policy.model_validate({"rules": rules}).apply(_table([english, chinese]))
    assert plain.column("reasons").to_pylist() == [["english_only"], ["gopher_mean_word_length"]]
    overridden = Policy.model_validate(
        {
            "rules": rules,
            "languages": {"zh": {"gopher_mean_word_length": False, "gopher_min_words": {"min": 500}}},
        }
    ).apply(_table([english, chinese]))
    assert overridden.column("reasons").to_pylist() == [["english_only"], ["gopher_min_words"]]
    # an override that gives only one bound keeps the other; null removes a bound
    rule = Policy.model_validate({"rules": rules}).rules[0]
    from pipelines.quality.policy import Override

    assert Override.model_validate({"max": 20}).bounds(rule) == (3, 20)
    assert Override.model_validate({"min": None}).bounds(rule) == (None, 10)


def test_default_policy_has_every_family_and_round_trips() -> None:
    default = load_policy()
    names = {r.name for r in default.rules}
    assert {"gopher_min_words", "gopher_dup_10gram", "c4_lorem_ipsum", "fineweb_line_punct_ratio"} <= names
    assert {"quality_low_score", "c4_min_sentences", "gopher_top_2gram"} <= names
    assert default.languages["zh"]["gopher_mean_word_length"] is False
    again = Policy.model_validate(yaml.safe_load(yaml.safe_dump(default.model_dump())))
    assert again == default


def test_bad_policies_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    cases = {
        "rules:\n  - {name: x, signal: no_such_signal, min: 1}\n": "unknown signal",
        "rules:\n  - {name: x, signal: word_count}\n": "needs min or max",
        "rules:\n  - {name: x, signal: word_count, min: 5, max: 1}\n": "is above max",
        "rules:\n  - {name: x, signal: word_count, min: 1}\n  - {name: x, signal: n_chars, min: 1}\n": (
            "unique"
        ),
        "rules:\n  - {name: x, signal: word_count, min: 1}\nlanguages: {zh: {y: off}}\n": "no rule named",
        "rules:\n  - {name: lang_not_allowed, signal: word_count, min: 1}\n": "reserved",
        "rules:\n  - {name: x, signal: word_count, minimum: 1}\n": "Extra inputs",
        "rules: [\n": "cannot read policy",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_policy(bad)
