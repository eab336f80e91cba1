"""Models: layers, graph pooling, CAST variants, ViT baselines, the registry, the
builder and the published weights."""

from castvit.models._builder import (create_model, load_pretrained, model_record, read_pretrained_config,
                                     resolve_pretrained_cfg, save_pretrained)
from castvit.models import fast_cpu
from castvit.models.cast import CAST, check_inputs, compile_model
from castvit.models.fps import farthest_point_sampling
from castvit.models.graph_pool import BlockFusion, GraphPool, compose_assignments
from castvit.models.hub import list_pretrained
from castvit.models.registry import list_models, model_config, model_entry
from castvit.models.vit import SuperpixelViT, ViT
from castvit.models import variants  # noqa: E402,F401  (registers every model; the registry imports no model)

__all__ = [
    "CAST", "ViT", "SuperpixelViT", "GraphPool", "BlockFusion", "check_inputs", "compile_model", "compose_assignments",
    "fast_cpu",
    "create_model", "farthest_point_sampling", "list_models", "list_pretrained", "load_pretrained", "model_config",
    "model_entry", "model_record", "read_pretrained_config", "resolve_pretrained_cfg", "save_pretrained",
]
