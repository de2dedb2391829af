"""The OLMo-2 model, its presets, checkpoints and Hugging Face conversion."""
