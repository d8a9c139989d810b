"""Shipping a run: the adapter merged into its base, streamed tensor by tensor, checked against the adapter on
its base, with a model card and SHA256SUMS."""
