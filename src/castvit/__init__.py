"""castvit: CAST superpixel vision transformers in plain PyTorch.

    import castvit
    model = castvit.create_model("cast_small", pretrained="cast_small.safetensors").eval()
    hierarchy = castvit.segment(model, image)        # image: H×W×3 uint8
    hierarchy.label_map(2), hierarchy.masks(3), hierarchy.plot()
"""

from castvit.checkpoint import load_checkpoint, save_pretrained
from castvit.hierarchy import Hierarchy, segment
from castvit.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["Hierarchy", "create_model", "list_models", "load_checkpoint", "save_pretrained", "segment"]
