"""Words that describe what a channel shows: the voice, the face, the words of a clip.

One lexicon serves two readers: the evaluation counts answers whose explanation uses a channel's
words for a clip without that channel (:mod:`affect_llm.evaluation.absent_channels`), and decoding
keeps an explanation from writing them (:mod:`affect_llm.generation.absent_explanation`). Channel
names that are also used to state absence ("audio", "video", "transcript") are left out, since
naming a channel is not describing it; so are words of everyday figurative use ("sounds like",
"looks like", "an expression of").
"""

from __future__ import annotations

import re

# Per evidence key (``audio``, ``video``, ``text``): a regex alternation of its describing words.
DESCRIBING_WORDS: dict[str, str] = {
    "audio": r"voices?|vocal(?:ly)?|tone|tones|pitch(?:ed|es)?|intonation|prosody|loud(?:ly|er|ness)?|"
    r"quiet(?:ly)?|softly|shout(?:s|ing|ed)?|yell(?:s|ing|ed)?|whisper(?:s|ing|ed)?|speak(?:s|ing|er)?|"
    r"spoke|speech|tremb(?:le|les|ling)|shaky|sigh(?:s|ing|ed)?|laugh(?:s|ing|ter|ed)?|accent",
    "video": r"face|faces|facial|smil(?:e|es|ed|ing)|frown(?:s|ing|ed)?|brows?|eyebrows?|eyes?|mouth|"
    r"lips?|gaze|grin(?:s|ning)?|jaw|forehead|nose|cheeks?|glar(?:e|es|ing)|scowl(?:s|ing)?|tears|"
    r"posture|gestures?",
    "text": r"words?|says|said|saying|sentences?|utterances?|phrases?|phrasing|wording|statements?|"
    r"subtitles?|lyrics|quotes?|quoted",
}
# Words that open a statement of absence right before a channel's word: "no face", "without a voice",
# "lacks any spoken words".
NEGATIONS = r"no|without|lacks?|lacking|neither|nor"


def describing_pattern(channel: str) -> re.Pattern[str]:
    """A case-insensitive regex finding the describing words of ``channel`` as whole words.

    Raises:
        ValueError: If ``channel`` is not an evidence key.
    """
    if channel not in DESCRIBING_WORDS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {sorted(DESCRIBING_WORDS)}")
    return re.compile(rf"\b(?:{DESCRIBING_WORDS[channel]})\b", re.IGNORECASE)


def is_describing_word(word: str, channel: str) -> bool:
    """Whether ``word`` (one word, any case) is a describing word of ``channel``."""
    return re.fullmatch(rf"(?:{DESCRIBING_WORDS[channel]})", word, re.IGNORECASE) is not None


def describing_words(channel: str) -> tuple[str, ...]:
    """Every word the ``channel``'s alternation matches, lower case (the lexicon spelled out).

    The alternations use literals, ``(?:a|b)`` groups and ``?`` after a letter or group only;
    anything else raises, so a lexicon edit that this cannot spell out is caught by the tests.
    """
    words, rest = _expand(DESCRIBING_WORDS[channel], 0)
    if rest != len(DESCRIBING_WORDS[channel]):
        raise ValueError(f"{channel}: cannot spell out the lexicon past position {rest}")
    return tuple(sorted(words))


def _expand(pattern: str, at: int) -> tuple[set[str], int]:
    """The strings of the alternation starting at ``at`` up to a closing ``)`` or the end."""
    options: set[str] = set()
    current: set[str] = {""}
    while at < len(pattern) and pattern[at] != ")":
        char = pattern[at]
        if char == "|":
            options |= current
            current, at = {""}, at + 1
            continue
        if pattern.startswith("(?:", at):
            atom, at = _expand(pattern, at + 3)
            at += 1  # the closing parenthesis
        elif char.isalpha():
            atom, at = {char}, at + 1
        else:
            raise ValueError(f"unexpected {char!r} at {at} in the describing words")
        if at < len(pattern) and pattern[at] == "?":
            atom, at = atom | {""}, at + 1
        current = {head + tail for head in current for tail in atom}
    return options | current, at

