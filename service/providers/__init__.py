"""Talking to fine-tuning providers (OpenAI, Azure OpenAI, other OpenAI-compatible APIs).

`client` wraps the official `openai` SDK in plain functions (upload, wait, create and follow a
job, classify errors); `fake` is a local stand-in for the provider's endpoints that tests and
`tuneset fake-provider` run, with its own file checks and fault injection.
"""
