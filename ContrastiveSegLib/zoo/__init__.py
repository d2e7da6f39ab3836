"""Weights on disk (safetensors with a JSON header) and the registry of shipped encoders."""
