"""The HTTP API, in the manner of Starlette: each concern its own module.

app         the factory: collaborators from the settings, lifespan, wiring (create_app)
routes      the endpoints as plain handlers: /healthz, /readyz, /metrics, /solve
state       what the handlers work with (solver, engine, executor, admission, metrics, settings)
middleware  request id, body limit, start-up failure in one line
errors      the ErrorResponse of every failure and the exception handlers
disconnect  a client that leaves cancels its candidates
openai/     the OpenAI-compatible API: /v1/models, /v1/chat/completions
"""
