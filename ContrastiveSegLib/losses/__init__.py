"""Losses: supervised segmentation on sparse labels, and the contrastive losses of the four papers.

Each contrastive loss is a standalone module built on one masked core (positive / negative / ignore pairs with
per-pair weights): see :mod:`ContrastiveSegLib.losses.contrastive` and docs/methods.md.
"""
from ContrastiveSegLib.losses.contrastive import (
    MaskedContrastiveLoss,
    block_ignore_mask,
    contrastive_pair_losses,
    identity_positive_mask,
    instance_ids,
    label_positive_mask,
    masked_contrastive_loss,
    nt_xent_loss,
    reduce_pair_losses,
    same_group_ignore_mask,
)
from ContrastiveSegLib.losses.dense import DenseContrastiveLoss
from ContrastiveSegLib.losses.label_consistency import LabelConsistencyLoss
from ContrastiveSegLib.losses.reconstruction import ReconstructionLoss, reconstruction_loss
from ContrastiveSegLib.losses.region import RegionContrastiveLoss, pool_regions
from ContrastiveSegLib.losses.segmentation import MaskedDiceCELoss
from ContrastiveSegLib.losses.selfpaced import GammaSchedule, MetaLabelTerm, SelfPacedContrastiveLoss, self_paced_weights

__all__ = [
    "MaskedDiceCELoss", "MaskedContrastiveLoss", "masked_contrastive_loss", "contrastive_pair_losses",
    "reduce_pair_losses", "nt_xent_loss", "identity_positive_mask", "label_positive_mask", "same_group_ignore_mask",
    "block_ignore_mask", "instance_ids", "SelfPacedContrastiveLoss", "MetaLabelTerm", "GammaSchedule",
    "self_paced_weights", "DenseContrastiveLoss", "RegionContrastiveLoss", "pool_regions", "LabelConsistencyLoss",
    "ReconstructionLoss", "reconstruction_loss",
]
