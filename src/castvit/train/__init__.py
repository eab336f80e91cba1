"""Training: MoCo-v3 pre-training, supervised (DeiT) training and the linear probe, on one
CPU or a torchrun cluster, with exact resume.

Entry points: ``castvit train CONFIG.yaml key=value ...`` (:mod:`castvit.cli.train`)
or the functions below. Modules by role: :mod:`~castvit.train.engine` (the loop,
checkpoints, logging), :mod:`~castvit.train.supervised`, :mod:`~castvit.train.moco`,
:mod:`~castvit.train.linear_probe`, :mod:`~castvit.train.knn` (frozen-feature kNN),
:mod:`~castvit.train.schedules`, :mod:`~castvit.train.distributed`,
:mod:`~castvit.train.config` / :mod:`~castvit.train.build` (YAML recipes).
"""

from castvit.train.engine import LoopConfig, fit
from castvit.train.knn import extract_features, knn_accuracy, knn_evaluate
from castvit.train.linear_probe import LinearProbeConfig, train_linear_probe
from castvit.train.moco import MoCo, MoCoConfig, contrastive_loss, train_moco
from castvit.train.schedules import cosine_lr, deit_epoch_lr, moco_momentum, timm_cosine_lr
from castvit.train.supervised import SupervisedConfig, evaluate_classifier, train_supervised

__all__ = [
    "LinearProbeConfig", "LoopConfig", "MoCo", "MoCoConfig", "SupervisedConfig", "contrastive_loss", "cosine_lr",
    "deit_epoch_lr", "evaluate_classifier", "extract_features", "fit", "knn_accuracy", "knn_evaluate",
    "moco_momentum", "timm_cosine_lr", "train_linear_probe", "train_moco", "train_supervised",
]
