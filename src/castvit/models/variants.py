"""The registered variants: sizes of SPEC §3 and the ViT baselines."""

from __future__ import annotations

from castvit.models.cast import CAST
from castvit.models.registry import register_model
from castvit.models.vit import SuperpixelViT, ViT

SIZES = {"small": 384, "base": 768}
DEPTHS = {"": [3, 3, 3, 2], "_deep": [6, 3, 3, 3]}
COARSE = [64, 32, 16, 8]
FINE = [320, 160, 80, 40]

for size, dim in SIZES.items():
    for deep, depth in DEPTHS.items():
        base = dict(embed_dim=dim, depth=depth, num_heads=12)
        stem = f"cast_{size}{deep}"
        register_model(stem, CAST, dict(base, num_clusters=COARSE, convention="moco", task="cls"),
                       f"CAST-{size[0].upper()}{deep and '-deep'} classifier, MoCo convention (sin-cos PE)",
                       official=f"cast_models.cast.{stem}", tags=("cast", "cls", "moco"))
        register_model(f"{stem}_deit", CAST, dict(base, num_clusters=COARSE, convention="deit", task="cls"),
                       f"CAST-{size[0].upper()}{deep and '-deep'} classifier, DeiT convention (learned PE)",
                       official=f"cast_models.cast_deit.{stem}", tags=("cast", "cls", "deit"))
        register_model(f"{stem}_seg_pretrain", CAST,
                       dict(base, num_clusters=COARSE, convention="moco", task="seg_pretrain"),
                       "block-fusion CAST for segmentation pre-training (64/32/16/8, mean of fused tokens)",
                       official=f"cast_models.cast_seg.{stem}_pretrain", tags=("cast", "seg", "moco"))
        register_model(f"{stem}_seg", CAST, dict(base, num_clusters=FINE, convention="moco", task="seg"),
                       "block-fusion CAST for segmentation (320/160/80/40, per-token output)",
                       official=f"cast_models.cast_seg.{stem}" if not deep else None,
                       tags=("cast", "seg", "moco"))
        register_model(f"{stem}_deit_seg_pretrain", CAST,
                       dict(base, num_clusters=COARSE, convention="deit", task="seg_pretrain"),
                       "block-fusion CAST, DeiT convention, 64/32/16/8, mean of fused tokens",
                       official=None, tags=("cast", "seg", "deit"))
        register_model(f"{stem}_deit_seg", CAST, dict(base, num_clusters=FINE, convention="deit", task="seg"),
                       "Segmenter encoder: block-fusion CAST, DeiT convention, 320/160/80/40",
                       official=f"cast_models.cast_seg_deit.{stem}", tags=("cast", "seg", "deit"))

    register_model(f"vit_conv_{size}_patch16", ViT, dict(embed_dim=dim, depth=11, num_heads=12, patch_size=16),
                   f"MoCo-v3 ViT-{size[0].upper()}/16 with conv stem (11 blocks + stem), sin-cos PE",
                   tags=("vit", "baseline"))
    register_model(f"vit_conv_{size}_patch8", ViT, dict(embed_dim=dim, depth=11, num_heads=12, patch_size=8),
                   f"ViT-{size[0].upper()}/8 with CAST's conv stem, every 8×8 patch a token",
                   tags=("vit", "baseline"))
    register_model(f"vit_suppix_{size}", SuperpixelViT, dict(embed_dim=dim, depth=11, num_heads=12),
                   f"ViT-{size[0].upper()} whose tokens are superpixel means (CAST tokens, no pooling)",
                   tags=("vit", "baseline", "superpixel"))
