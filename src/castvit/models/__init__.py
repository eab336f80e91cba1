"""Models: layers, graph pooling, CAST variants, ViT baselines, heads and the registry."""

from castvit.models.cast import CAST, check_inputs
from castvit.models.fps import farthest_point_sampling
from castvit.models.graph_pool import BlockFusion, GraphPool, compose_assignments
from castvit.models.registry import create_model, list_models, model_config, model_entry, model_record
from castvit.models.vit import SuperpixelViT, ViT

__all__ = [
    "CAST", "ViT", "SuperpixelViT", "GraphPool", "BlockFusion", "check_inputs", "compose_assignments",
    "create_model", "farthest_point_sampling", "list_models", "model_config", "model_entry", "model_record",
]
