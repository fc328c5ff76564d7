"""Training the project's default model: tokenizer, data, loop, evaluation (`python -m engine.train`)."""
