"""Inference with registered models: dual-head probabilities, top-k labels."""
