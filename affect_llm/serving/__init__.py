"""``affect-llm serve``: an OpenAI-compatible chat server with audio, video and images, and its web page.

Layers inside, lowest first: ``errors`` and ``schema`` (the request as typed data), ``sniff``
(media kinds by content), ``conversation`` (an OpenAI chat -> this model's prompt), ``media`` (decode,
encode, recognise speech; cached by content hash), ``scheduler`` (dynamic batching on a generation
thread), ``responses`` (OpenAI response bodies), ``app`` (routes, limits, the page), ``server``
(options and uvicorn).
"""
