"""lorastudio: train LoRA adapters and generate images, locally."""

__version__ = "0.1.0"
