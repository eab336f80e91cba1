"""castvit: CAST superpixel vision transformers in plain PyTorch."""
