"""castvit: CAST superpixel vision transformers in plain PyTorch.

    import castvit
    model = castvit.create_model("cast_small.moco_in1k")     # or pretrained="run/last.pth.tar"
    predictor = castvit.HierarchyPredictor(model)             # eval mode, the model's preprocessing
    h = predictor.predict(image)                              # image: H×W×3 uint8 → Hierarchy
    h.label_map(2), h.masks(3)
    castvit.viz.plot_hierarchy(h)
"""

from castvit.checkpoint import CheckpointError, load_checkpoint
from castvit.hierarchy import Hierarchy
from castvit.inference import HierarchyPredictor, segment
from castvit.models import create_model, list_models, list_pretrained, save_pretrained

__version__ = "0.2.0"
__all__ = ["CheckpointError", "Hierarchy", "HierarchyPredictor", "create_model", "list_models", "list_pretrained",
           "load_checkpoint", "save_pretrained", "segment"]
