"""The demo service: what a kiki-otel service looks like, used by the compose stack and tests."""
