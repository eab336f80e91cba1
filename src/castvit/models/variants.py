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

# Semantic segmentation (PROTOCOLS §1–2): Segmenter on the DeiT-convention encoder, SPML on the MoCo one.
from castvit.models.segmenter import SegmentationModel  # noqa: E402

# the preprocessing of their seg encoders: 512² crops, SEEDS with the fine-tuning settings
SEMANTIC_PREPROCESSING = {"input_size": [512, 512], "superpixels": {
    "method": "seeds", "num_levels": 1, "prior": 2, "histogram_bins": 5, "num_iterations": 15,
    "n_segments": 1024, "pixels_per_superpixel": 256}}

for size in SIZES:
    register_model(f"segmenter_cast_{size}", SegmentationModel,
                   dict(encoder=f"cast_{size}_deit_seg", decoder="mask_transformer", num_classes=150,
                        encoder_kwargs={"img_size": 512}),
                   f"Segmenter: CAST-{size[0].upper()} DeiT-seg encoder + mask transformer (ADE20K / Pascal Context)",
                   tags=("cast", "seg", "semantic"),
                   pretrained_cfg=SEMANTIC_PREPROCESSING)
    register_model(f"spml_cast_{size}", SegmentationModel,
                   dict(encoder=f"cast_{size}_seg", decoder="spml", num_classes=21,
                        encoder_kwargs={"img_size": 512}),
                   f"SPML: CAST-{size[0].upper()} MoCo-seg encoder + 1×1-conv head (Pascal VOC)",
                   tags=("cast", "seg", "semantic"),
                   pretrained_cfg=SEMANTIC_PREPROCESSING)

# ToMe on superpixel tokens (the authors' token-merging ablation), traced into a hierarchy
# whose levels have CAST's token counts at the ends of CAST's stages.
from castvit.models.tome import ToMeViT  # noqa: E402

for size, dim in SIZES.items():
    register_model(f"tome_{size}", ToMeViT, dict(embed_dim=dim, depth=[3, 3, 3, 2], num_heads=12, num_clusters=COARSE),
                   f"ToMe-{size[0].upper()} on superpixel tokens (vit_suppix_{size} + bipartite merging, traced "
                   "to 64/32/16/8 tokens)", tags=("tome", "baseline", "superpixel"))
