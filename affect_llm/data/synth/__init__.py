"""Synthetic sample set whose emotion cues sit in the voice, the face or the words.

Used to prove that training learns from the media and not only from text: in the held-out
single-cue subsets the other channels are neutral. Clips with a channel missing (no audio, no face,
no words, one channel only) prove that answers describe only what a clip has.
"""

from affect_llm.data.synth.generate import (
    MISSING_LAYOUTS,
    MISSING_TEST_SUBSETS,
    TEST_CUES,
    SampleSpec,
    check_id_prefix,
    generate_synthetic_set,
    plan_samples,
    render_sample,
)

__all__ = [
    "MISSING_LAYOUTS",
    "MISSING_TEST_SUBSETS",
    "TEST_CUES",
    "SampleSpec",
    "check_id_prefix",
    "generate_synthetic_set",
    "plan_samples",
    "render_sample",
]
