"""Synthetic sample set whose emotion cues sit in the voice, the face or the words.

Used to prove that training learns from the media and not only from text: in the held-out
single-cue subsets the other channels are neutral.
"""

from affect_llm.data.synth.generate import SampleSpec, generate_synthetic_set, plan_samples, render_sample

__all__ = ["SampleSpec", "generate_synthetic_set", "plan_samples", "render_sample"]
