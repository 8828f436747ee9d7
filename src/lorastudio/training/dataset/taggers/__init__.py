"""Taggers: local models that turn a picture into booru-style tags (WD14 through onnxruntime)."""
