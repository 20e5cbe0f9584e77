"""Model components: encoders, projectors, the composite model, trainable groups, checkpoints.

Kept import-free so that ``affect_llm.configuration`` can import the face CNN module without a cycle;
import from the submodules directly.
"""
