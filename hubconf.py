"""torch.hub entry points: ``torch.hub.load("<repo>", "cast_small", pretrained="moco_in1k")``.

Every registered castvit model is an entry; keyword arguments go to
``castvit.create_model`` (``pretrained=`` a published tag or a file, and constructor
overrides).
"""

import os
import sys

dependencies = ["torch", "numpy", "cv2", "safetensors", "skimage", "scipy"]

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from castvit.models import create_model as _create_model  # noqa: E402
from castvit.models import list_models as _list_models  # noqa: E402


def _entry(name):
    def load(pretrained=None, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    load.__name__ = name
    load.__doc__ = f"castvit.create_model({name!r}, pretrained=..., **overrides)"
    return load


for _name in _list_models():
    globals()[_name] = _entry(_name)
