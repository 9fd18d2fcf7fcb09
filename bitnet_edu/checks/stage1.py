"""Checks for stage 1 (absmean quantization)."""
