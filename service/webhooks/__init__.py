"""Caller webhooks: SSRF-guarded delivery of Standard Webhooks-signed callbacks, retried on a schedule.

The pieces are small and free of Celery and Litestar so the API (registration, replay) and the
workers (delivery) share one implementation: `service.ssrf` (shared with the provider client)
decides where we may connect, `signing` makes the headers, `schedule` the retry delays, `send`
one attempt; storage is `service.store.webhooks`.
"""
