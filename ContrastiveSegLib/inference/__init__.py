"""Whole-volume prediction and post-processing."""
