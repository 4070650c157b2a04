"""The Responses API (``POST /responses``), served statelessly on the chat path.

``types`` holds the msgspec request and response types, ``translate`` turns a
request into a :class:`~privatai.core.protocol.ChatRequest` (and refuses what
would need stored state), ``builder`` turns normalized events into the
streamed events and the ``response`` object.
"""
