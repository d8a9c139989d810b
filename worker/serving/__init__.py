"""Answering prompts: greedy and sampled decoding with a KV cache, and the playground's lockstep generation."""
