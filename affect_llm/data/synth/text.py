"""Sentences, cue phrases and reference explanations for the synthetic sample set.

The text channel carries an emotion only through the words of the transcript. Every pool is split
by a fixed rule (every third sentence is held out) so test sentences never appear in training,
whatever the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Emotion = Literal["happy", "sad", "angry", "surprised"]
Channel = Literal["audio", "face", "text"]

EMOTIONS: tuple[str, ...] = ("happy", "sad", "angry", "surprised")
NEUTRAL = "neutral"
CHANNELS: tuple[str, ...] = ("audio", "face", "text")

# Short sentences (4-7 words) so even slow, sad speech fits in the 3 s clip limit.
# 48 per level (32 trained on, 16 held out). With 24, the model read held-out neutral sentences as
# emotional (face-cue clips saying "We need more paper." answered "sad"); from one quickstart each
# on one machine, 48 against 24: single-cue voice 0.93 / 0.90, face 0.97 / 0.80, words 0.73 / 0.67
# (on 16 / 8 held-out sentences), accuracy 0.91 / 0.86, conflict family F1 0.83 / 0.80, Polish m1
# 0.60 / 0.64.
SENTENCES: dict[str, tuple[str, ...]] = {
    "happy": (
        "This is the best day ever.",
        "I am so glad you came.",
        "We won the whole thing!",
        "I love this so much.",
        "What a wonderful surprise party.",
        "I feel absolutely fantastic today.",
        "This makes me really happy.",
        "We are finally going home!",
        "Everything worked out perfectly.",
        "I passed all my exams!",
        "You made my whole week.",
        "What a lovely sunny morning.",
        "I got the job!",
        "This is pure joy.",
        "We had so much fun.",
        "I am thrilled for you.",
        "Best news I have heard.",
        "Life is wonderful right now.",
        "I could dance all day.",
        "Thank you, this is perfect.",
        "Our team did great today.",
        "I am delighted to be here.",
        "That was a brilliant show.",
        "We are going on holiday!",
        "I am so proud of you.",
        "This cake tastes amazing!",
        "We are getting married!",
        "My sister had a baby!",
        "That made me laugh so hard.",
        "I finally feel at peace.",
        "What a beautiful day outside.",
        "Our garden looks gorgeous today.",
        "I am over the moon!",
        "The party was a blast.",
        "You are the best friend ever.",
        "I just won a prize!",
        "We bought our first house!",
        "I feel so lucky today.",
        "Hooray, school is out!",
        "This song makes me smile.",
        "Dinner was absolutely delicious.",
        "I am having a great time.",
        "The kids loved their presents.",
        "Good news, we got it!",
        "I feel like singing today.",
        "She said my work was excellent.",
        "Everyone came to celebrate.",
        "Today could not be better.",
    ),
    "sad": (
        "I miss her every day.",
        "Nothing ever goes right for me.",
        "He is not coming back.",
        "I feel so alone tonight.",
        "We lost our old dog.",
        "I failed again, as always.",
        "Nobody remembered my birthday.",
        "It is all my fault.",
        "I cannot stop crying.",
        "The house feels empty now.",
        "I wish things were different.",
        "My best friend moved away.",
        "I have lost all hope.",
        "Everything feels so heavy.",
        "We never said goodbye.",
        "I am tired of trying.",
        "The letter brought bad news.",
        "I will never see them again.",
        "My heart is broken.",
        "Nobody wants to listen.",
        "I feel empty inside.",
        "The garden died this winter.",
        "I miss how it was.",
        "It hurts to remember.",
        "I lost my grandmother today.",
        "He forgot about me again.",
        "I have no one to talk to.",
        "Our old house is gone.",
        "I wanted this so badly.",
        "The doctor had bad news.",
        "I let everyone down.",
        "She never wrote back.",
        "I feel so hopeless now.",
        "My cat passed away.",
        "It will never be the same.",
        "I spent the holiday alone.",
        "They did not pick me.",
        "I keep thinking about him.",
        "Everything I loved is gone.",
        "The rain matches my mood.",
        "I am so sorry it ended.",
        "No one came to my party.",
        "I gave up on my dream.",
        "My heart aches for them.",
        "I cried myself to sleep.",
        "Our friendship is over now.",
        "I feel worthless and tired.",
        "The funeral was this morning.",
    ),
    "angry": (
        "Get out of my room!",
        "How dare you lie to me!",
        "This is completely unacceptable.",
        "Stop touching my things!",
        "I am sick of this!",
        "You ruined everything again!",
        "Do not ever call me.",
        "That is a total insult.",
        "I told you a hundred times!",
        "Who broke my window?",
        "You never listen to me!",
        "I will not forgive this.",
        "Stop wasting my time!",
        "This is outrageous and unfair.",
        "Give that back right now!",
        "I am furious with you.",
        "You cheated, admit it!",
        "Enough of your excuses!",
        "Leave me alone, I said!",
        "They stole my bike again!",
        "That was a rotten trick.",
        "I hate being ignored!",
        "Shut that noise off now!",
        "You broke your promise!",
        "Get your hands off me!",
        "You lied to my face!",
        "I am done with your nonsense!",
        "Who took my lunch again?",
        "This is the last straw!",
        "Do not talk back to me!",
        "You wrecked my car!",
        "I demand an apology now!",
        "How could you be so careless?",
        "Stop interrupting me!",
        "That is not fair at all!",
        "You have no right!",
        "I am fed up with you!",
        "Get out and stay out!",
        "Why do you never help?",
        "You betrayed my trust!",
        "I will not stand for this!",
        "Quit yelling at my kids!",
        "This service is a disgrace!",
        "You owe me money, pay up!",
        "Keep your mouth shut!",
        "I am absolutely livid!",
        "Stop blaming me for everything!",
        "Who left this mess here?",
    ),
    "surprised": (
        "Wait, you did what?",
        "I cannot believe my eyes!",
        "No way, is that real?",
        "Oh, you are here already?",
        "Really? Since when?",
        "Wow, I never expected that!",
        "What, it snowed in June?",
        "You bought a boat?",
        "Is that really you?",
        "Where did that come from?",
        "She said yes? Already?",
        "Whoa, that was sudden!",
        "You finished it so fast?",
        "They are twins? Really?",
        "How is that even possible?",
        "Oh! I did not see you.",
        "The shop closed? Just like that?",
        "He can fly a plane?",
        "What a shock that was!",
        "You found it? Where?",
        "It is already midnight?",
        "That was totally unexpected!",
        "You speak Japanese?",
        "Seriously? Right now?",
        "Wait, is that my name?",
        "You got a dog?",
        "Oh my, look at that!",
        "The power went out? Now?",
        "He won the lottery?",
        "I did not expect you here!",
        "What? It is free?",
        "They moved to Spain?",
        "Is it my birthday already?",
        "You cut your hair?",
        "Whoa, where did you come from?",
        "No way, you made this?",
        "She is leaving? Today?",
        "Hold on, it worked?",
        "I had no idea!",
        "The test was cancelled?",
        "Wow, look how big it is!",
        "You know my brother?",
        "It rained frogs? Really?",
        "Oh! That is a snake!",
        "He said what to her?",
        "Is this a joke?",
        "They found the ring?",
        "My goodness, so many people!",
    ),
    NEUTRAL: (
        "The meeting starts at nine.",
        "Please close the door.",
        "The train leaves from platform two.",
        "I put the keys on the table.",
        "The report has four pages.",
        "We need more paper.",
        "The shop opens on Monday.",
        "It is a blue car.",
        "The box is in the kitchen.",
        "I will call you later.",
        "The bus comes every hour.",
        "Turn left at the corner.",
        "The file is on the desk.",
        "Lunch is at twelve.",
        "The window faces north.",
        "He reads the newspaper.",
        "The chair is made of wood.",
        "We walked to the station.",
        "The cup is on the shelf.",
        "She works in an office.",
        "The road goes to the village.",
        "I bought some bread today.",
        "The printer is downstairs.",
        "The form has three fields.",
        "The library closes at six.",
        "Put the plates in the sink.",
        "The meeting room is upstairs.",
        "The store sells fresh fruit.",
        "My shoes are by the door.",
        "The museum is near the park.",
        "The class starts on Tuesday.",
        "The red pen is in the drawer.",
        "We have a map of town.",
        "The kettle is on the stove.",
        "The bridge crosses the river.",
        "Tickets are sold at the gate.",
        "The lamp needs a new bulb.",
        "The parking lot is full.",
        "He takes the early bus.",
        "The rug is on the floor.",
        "The letter goes in the box.",
        "Our street has six houses.",
        "The clock is on the wall.",
        "The bakery is on Main Street.",
        "She washed the dishes.",
        "The door is painted white.",
        "The phone is charging now.",
        "The notes are in the folder.",
    ),
}

# What each channel looks or sounds like per level; used both for explanations and evidence.
VOICE_PHRASES: dict[str, str] = {
    "happy": "the voice is high-pitched, fast and loud",
    "sad": "the voice is low, slow and quiet",
    "angry": "the voice is loud, harsh and fast",
    "surprised": "the voice is very high and rises in pitch",
    NEUTRAL: "the voice is even and moderate",
}
FACE_PHRASES: dict[str, str] = {
    "happy": "the face smiles with upturned mouth corners",
    "sad": "the face has a down-turned mouth and raised inner brows",
    "angry": "the face has lowered, inward-slanted brows and a tight mouth",
    "surprised": "the face has raised brows, wide eyes and an open round mouth",
    NEUTRAL: "the face is neutral",
}
TEXT_PHRASES: dict[str, str] = {
    "happy": "the words express joy",
    "sad": "the words express loss and sorrow",
    "angry": "the words are hostile and blaming",
    "surprised": "the words express astonishment",
    NEUTRAL: "the words are neutral",
}
EMOTION_NOUNS: dict[str, str] = {
    "happy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "surprised": "surprise",
}
# Circumplex coordinates in [-1, 1]; conflicting samples average the emotions shown.
VALENCE_AROUSAL: dict[str, tuple[float, float]] = {
    "happy": (0.8, 0.5),
    "sad": (-0.7, -0.5),
    "angry": (-0.6, 0.8),
    "surprised": (0.2, 0.8),
    NEUTRAL: (0.0, 0.0),
}

_PHRASES: dict[str, dict[str, str]] = {"audio": VOICE_PHRASES, "face": FACE_PHRASES, "text": TEXT_PHRASES}
# A missing channel is stated, never described: these are the only words a reference spends on it.
ABSENT_PHRASES: dict[str, str] = {
    "audio": "there is no audio",
    "face": "no face is visible",
    "text": "there is no transcript",
}
# Evidence key of the answer schema for each channel.
EVIDENCE_KEYS: dict[str, str] = {"audio": "audio", "face": "video", "text": "text"}
# What the voice says when the clip has no words: syllables that carry prosody but no meaning.
# Only those Whisper-base hears as syllables too; "na na" comes back as "No, no, no", "ma ma" as
# "Mama", "da da" as "Don't know", so they are not used.
VOCALISATIONS: tuple[str, ...] = (
    "La la la, la la.",
    "La la, la la la.",
    "Mm, mm mm, mm.",
    "Mm mm, mm mm mm.",
)


def sentence_pool(level: str, held_out: bool) -> tuple[str, ...]:
    """Sentences of one level (an emotion or ``"neutral"``) for training or for the held-out test.

    Args:
        level: An emotion in ``EMOTIONS`` or ``"neutral"``.
        held_out: True for the test pool (every third sentence), False for the rest.

    Returns:
        The sentences, in a fixed order.

    Raises:
        ValueError: If ``level`` is unknown.
    """
    if level not in SENTENCES:
        raise ValueError(f"unknown sentence level {level!r}; expected one of {sorted(SENTENCES)}")
    return tuple(s for i, s in enumerate(SENTENCES[level]) if (i % 3 == 2) == held_out)


def channel_phrase(channel: str, level: str) -> str:
    """What one channel shows at one level, e.g. ``"the voice is low, slow and quiet"``."""
    if channel not in _PHRASES:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    return _PHRASES[channel][level]


def absent_phrase(channel: str) -> str:
    """How a reference states that a channel is missing, e.g. ``"no face is visible"``."""
    if channel not in ABSENT_PHRASES:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    return ABSENT_PHRASES[channel]


def absent_sentence(channels: Sequence[str]) -> str:
    """The sentence a reference ends with for its missing channels, e.g. ``"No face is visible and
    there is no transcript."``; empty when none is missing."""
    if not channels:
        return ""
    return _capitalize(" and ".join(absent_phrase(c) for c in channels)) + "."


def present_channels(cues: dict[str, str | None]) -> list[str]:
    """Channels (``audio``, ``face``, ``text``) that the clip has: those whose level is not None."""
    return [channel for channel in CHANNELS if cues.get(channel) is not None]


def evidence_for(cues: dict[str, str | None], transcript: str | None) -> dict[str, str | None]:
    """Per-modality evidence keyed as in model answers (``audio``, ``video``, ``text``).

    An absent channel (level None, or no transcript for the words) gets ``None``: evidence
    describes only what the clip has.
    """
    evidence: dict[str, str | None] = {key: None for key in EVIDENCE_KEYS.values()}
    if cues.get("audio") is not None:
        evidence["audio"] = _capitalize(channel_phrase("audio", cues["audio"])) + "."
    if cues.get("face") is not None:
        evidence["video"] = _capitalize(channel_phrase("face", cues["face"])) + "."
    if cues.get("text") is not None and transcript is not None:
        evidence["text"] = _capitalize(f'{channel_phrase("text", cues["text"])} ("{transcript}")') + "."
    return evidence


def labels_for(cues: dict[str, str | None]) -> list[str]:
    """The emotions shown by any present channel, in channel order, without repeats."""
    labels: list[str] = []
    for channel in CHANNELS:
        level = cues.get(channel)
        if level is not None and level != NEUTRAL and level not in labels:
            labels.append(level)
    return labels


def explanation_for(cues: dict[str, str | None]) -> str:
    """Reference explanation that names each present channel's cue and says which are missing.

    Examples: ``"The voice is high-pitched, fast and loud, which suggests happiness; the face is
    neutral and the words are neutral."``; with the voice missing: ``"The face smiles with upturned
    mouth corners, which suggests happiness; and the words express joy. There is no audio."``
    """
    present = present_channels(cues)
    clauses = []
    for channel in present:
        level = cues[channel]
        phrase = channel_phrase(channel, level)
        clauses.append(phrase if level == NEUTRAL else f"{phrase}, which suggests {EMOTION_NOUNS[level]}")
    text = _join_clauses(clauses, [cues[c] != NEUTRAL for c in present])
    absent = absent_sentence([c for c in CHANNELS if c not in present])
    if absent:
        text += (" " if text else "") + absent
    labels = labels_for(cues)
    if len(labels) > 1:
        shown = " and ".join(EMOTION_NOUNS[e] for e in labels)
        text += f" The channels disagree, so the sample shows {shown}."
    return _capitalize(text)


def _join_clauses(clauses: list[str], carries_cue: list[bool]) -> str:
    """``a; b and c.`` as the three-channel references always read; fewer clauses the same way."""
    if not clauses:
        return ""
    if len(clauses) == 1:
        return clauses[0] + "."
    # A comma already follows a cue-carrying clause, so a semicolon keeps the list readable.
    joiner = "; and " if carries_cue[-2] else " and "
    head = "; ".join(clauses[:-1])
    return f"{head}{joiner}{clauses[-1]}."


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]
