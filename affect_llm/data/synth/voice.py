"""Emotional speech from espeak-ng with per-emotion prosody, finished by sox at 16 kHz mono.

The emotion lives in the prosody (pitch, rate, loudness, pitch contour, distortion), not in the
words, so a model must listen to answer. Every random choice is made up front into a ``Prosody``
so rendering is a pure function of its inputs and the output bytes repeat for a seed.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
MIN_SECONDS = 1.5
MAX_SECONDS = 3.0
VOICE_VARIANTS: tuple[str, ...] = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 5))

# (low, high) ranges per level. espeak pitch is 0-99, speed in words per minute; the final level
# is set by sox `norm` in dBFS because espeak's amplitude alone is swamped by voice differences.
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "happy": {"pitch": (80, 95), "speed": (190, 220), "gap": (0, 1), "level": (-4.0, -2.5)},
    "sad": {"pitch": (10, 25), "speed": (100, 125), "gap": (3, 6), "level": (-19.0, -16.0)},
    "angry": {"pitch": (40, 55), "speed": (185, 210), "gap": (0, 0), "level": (-1.5, -0.5)},
    "surprised": {"pitch": (90, 99), "speed": (155, 175), "gap": (1, 2), "level": (-6.0, -4.5)},
    "neutral": {"pitch": (45, 55), "speed": (150, 170), "gap": (1, 2), "level": (-10.0, -8.5)},
}
_AMPLITUDE: dict[str, int] = {"happy": 160, "sad": 60, "angry": 200, "surprised": 140, "neutral": 100}
# Surprise ends on a rising contour; anger gets a harsh, clipped edge.
_BEND_CENTS = (350, 550)
# espeak's pitch setting moves the voice less than the spread between voices, so a sox pitch shift
# widens the gap between high (happy, surprised) and low (sad) classes.
_SHIFT_CENTS: dict[str, tuple[int, int]] = {
    "happy": (200, 350),
    "sad": (-300, -180),
    "angry": (-40, 40),
    "surprised": (250, 400),
    "neutral": (-40, 40),
}
_OVERDRIVE_GAIN = (12, 18)


@dataclass(frozen=True)
class Prosody:
    """Fixed speech settings of one clip.

    Attributes:
        level: Emotion or ``"neutral"`` the prosody expresses.
        variant: espeak voice variant (``m1``..``m7``, ``f1``..``f4``).
        pitch: espeak base pitch, 0-99.
        speed: Words per minute.
        amplitude: espeak amplitude, 0-200.
        word_gap: Extra pause between words in units of 10 ms.
        level_db: Peak level after sox normalization, dBFS.
        shift_cents: Whole-clip pitch shift by sox, cents.
        bend_cents: Final pitch rise in cents (0 for none).
        overdrive_gain: sox overdrive gain in dB (0 for none).
    """

    level: str
    variant: str
    pitch: int
    speed: int
    amplitude: int
    word_gap: int
    level_db: float
    shift_cents: int
    bend_cents: int
    overdrive_gain: int

    def to_dict(self) -> dict[str, object]:
        """Plain dict for the manifest's ``extra``."""
        return asdict(self)


def sample_prosody(level: str, rng: np.random.Generator, variant: str | None = None) -> Prosody:
    """Draw the prosody of one clip from the ranges of ``level``.

    Args:
        level: An emotion or ``"neutral"``.
        rng: Seeded generator; the only source of randomness.
        variant: Voice variant to use; drawn from ``VOICE_VARIANTS`` when None.

    Returns:
        The clip's ``Prosody``.

    Raises:
        ValueError: If ``level`` is unknown.
    """
    if level not in _RANGES:
        raise ValueError(f"unknown prosody level {level!r}; expected one of {sorted(_RANGES)}")
    ranges = _RANGES[level]
    drawn_variant = VOICE_VARIANTS[int(rng.integers(len(VOICE_VARIANTS)))]
    return Prosody(
        level=level,
        variant=variant or drawn_variant,
        pitch=int(rng.integers(ranges["pitch"][0], ranges["pitch"][1] + 1)),
        speed=int(rng.integers(ranges["speed"][0], ranges["speed"][1] + 1)),
        amplitude=_AMPLITUDE[level],
        word_gap=int(rng.integers(ranges["gap"][0], ranges["gap"][1] + 1)),
        level_db=round(float(rng.uniform(*ranges["level"])), 2),
        shift_cents=int(rng.integers(*_SHIFT_CENTS[level])),
        bend_cents=int(rng.integers(*_BEND_CENTS)) if level == "surprised" else 0,
        overdrive_gain=int(rng.integers(*_OVERDRIVE_GAIN)) if level == "angry" else 0,
    )


def render_voice(sentence: str, prosody: Prosody, out_wav: Path) -> float:
    """Speak ``sentence`` with ``prosody`` into a 16 kHz mono 16-bit wav of 1.5-3 s.

    Args:
        sentence: Words to speak.
        prosody: Settings from ``sample_prosody``.
        out_wav: Output path.

    Returns:
        Duration of the written clip in seconds.

    Raises:
        RuntimeError: If espeak-ng or sox fails (the message carries their stderr).
    """
    with tempfile.TemporaryDirectory(prefix="affect-voice-") as tmp:
        raw = Path(tmp) / "raw.wav"
        _run(
            [
                "espeak-ng",
                "-v",
                f"en+{prosody.variant}",
                "-p",
                str(prosody.pitch),
                "-s",
                str(prosody.speed),
                "-a",
                str(prosody.amplitude),
                "-g",
                str(prosody.word_gap),
                "-w",
                str(raw),
                sentence,
            ],
            out_wav,
        )
        raw_seconds = sf.info(str(raw)).duration
        # -D: no dither (it is random); -R: repeatable effects, so the bytes repeat per seed.
        command = ["sox", "-D", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out_wav)]
        command += _effects(prosody, raw_seconds)
        _run(command, out_wav)
    return sf.info(str(out_wav)).duration


def _effects(prosody: Prosody, raw_seconds: float) -> list[str]:
    """sox effect chain: contour, distortion, level, then the 1.5-3 s length window."""
    effects: list[str] = []
    spoken = min(raw_seconds, MAX_SECONDS)
    if prosody.shift_cents:
        effects += ["pitch", str(prosody.shift_cents)]
    if prosody.bend_cents:
        # Rise over the last 40% of the spoken part, the classic question-like surprise contour.
        start = round(spoken * 0.55, 3)
        length = round(spoken * 0.4, 3)
        effects += ["bend", f"{start},{prosody.bend_cents},{length}"]
    if prosody.overdrive_gain:
        effects += ["overdrive", str(prosody.overdrive_gain)]
    effects += ["norm", f"{prosody.level_db:.2f}", "rate", "-h", str(SAMPLE_RATE)]
    effects += ["trim", "0", f"{MAX_SECONDS:.3f}"]
    if raw_seconds < MIN_SECONDS:
        effects += ["pad", "0", f"{MIN_SECONDS - raw_seconds + 0.01:.3f}"]
    return effects


def _run(command: list[str], target: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed writing {target} (exit {result.returncode}): {result.stderr.strip()}"
        )
