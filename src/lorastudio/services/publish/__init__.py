"""Publishing a trained LoRA to the Hugging Face Hub (`lorastudio publish`, POST .../publish)."""
