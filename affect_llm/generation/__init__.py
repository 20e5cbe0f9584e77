"""Answers out: generation backends, batch explanation, chat, and the Python pipeline."""
