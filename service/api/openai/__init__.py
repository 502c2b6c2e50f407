"""The OpenAI-compatible API: SC-TIR as a chat model any OpenAI client can call.

schemas  the request and response models, and what is refused
errors   OpenAI's error shape on every /v1 route
answer   a solve as a chat completion: the winning solution, the vote beside it
stream   the same streamed: chat.completion.chunk events, progress as SSE comments
routes   GET /v1/models, POST /v1/chat/completions (add_openai_routes)
"""

from service.api.openai.routes import add_openai_routes

__all__ = ["add_openai_routes"]
