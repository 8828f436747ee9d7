"""Captioners: local models that describe a picture in a sentence (BLIP through transformers)."""
