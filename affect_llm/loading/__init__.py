"""Building and loading models: from a spec, from checkpoints, with one precision rule.

Submodules: ``spec`` (the ``model:`` block of a config; no torch), ``build`` (fresh model and
processor), ``checkpoint`` (save, load, merge, fingerprint), ``upgrade`` (format-1 checkpoints).
"""
