"""Generation engines: embedded transformers (continuous batching) and OpenAI-compatible."""
