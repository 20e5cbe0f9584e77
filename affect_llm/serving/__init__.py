"""``affect-llm serve``: an OpenAI-compatible chat server with audio, video and images, and its web page.

Modules, lowest first: ``errors``, ``options`` and ``schema`` (the request as typed data), ``sniff``
(media kinds by content), ``conversation`` (an OpenAI chat -> this model's prompt), ``media`` (decode,
encode, recognise speech; cached by content hash), ``scheduler`` (dynamic batching on a generation
thread), ``responses`` (OpenAI response bodies), ``completions`` (one request from checks to answer),
``app`` (routes, limits, the page, ``static/``), ``server`` (loading and uvicorn).
"""
