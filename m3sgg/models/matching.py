"""Hungarian matching of boxes: box formats, GIoU, cosine costs and the DETR-style matcher.

Why: DSG-DETR (Feng et al., WACV 2023) links each frame's boxes to the running object tracks by a
one-to-one assignment minimising a weighted cost (class, appearance, box L1, -GIoU), the matcher
of DETR extended with a feature term. The same piece serves any model that assigns predictions to
targets (a DETR-like set loss): build a :class:`HungarianMatcher` and give it to the model, or to
the :class:`~m3sgg.engine.trainer.Trainer` as ``matcher=``, which hands it to the model.

The cost between prediction ``i`` and target ``j`` is::

    C[i, j] = w_class * (1 - cos(dist_i, dist_j))      # class distributions (or one-hots)
            + w_feature * (1 - cos(feat_i, feat_j))    # appearance features
            + w_box * |cxcywh_i - cxcywh_j|_1          # boxes, usually normalised by image size
            - w_giou * GIoU(box_i, box_j)

with cosines on vectors scaled by ``1 / (norm + 1e-12)`` and the assignment of
:func:`scipy.optimize.linear_sum_assignment` (rows in ascending order; a rectangular matrix
assigns ``min(rows, cols)`` pairs).

Example::

    matcher = HungarianMatcher()          # DSG-DETR's weights 0.5 / 1 / 1 / 0.5
    match = matcher(
        {"boxes": pred_xywh, "features": pred_feats, "dists": pred_onehot},
        {"boxes": track_xywh, "features": track_feats, "dists": track_dists},
    )
    match.rows, match.cols, match.class_cost, match.feature_cost
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as _scipy_lsa
from torch import Tensor, nn

__all__ = [
    "BoxFormat",
    "HungarianMatcher",
    "Match",
    "MatchTerms",
    "box_cxcywh_to_xyxy",
    "box_xywh_to_cxcywh",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "cosine_cost",
    "generalized_box_iou",
    "linear_sum_assignment",
    "to_cxcywh",
    "unit_rows",
]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` → ``(x1, y1, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` → ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_xywh_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, w, h)`` → ``(cx, cy, w, h)``."""
    x0, y0, w, h = boxes.unbind(-1)
    return torch.stack([x0 + w / 2, y0 + h / 2, w, h], dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` → ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def to_cxcywh(boxes: Tensor, box_format: BoxFormat) -> Tensor:
    """Boxes given in ``box_format`` as ``(cx, cy, w, h)``."""
    if box_format == "cxcywh":
        return boxes
    if box_format == "xywh":
        return box_xywh_to_cxcywh(boxes)
    if box_format == "xyxy":
        return box_xyxy_to_cxcywh(boxes)
    raise ValueError(f"box_format must be 'xyxy', 'xywh' or 'cxcywh', got {box_format!r}")


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU ``[len(a), len(b)]`` of xyxy boxes (continuous sizes, no +1).

    ``GIoU = IoU - (hull - union) / hull`` with ``hull`` the area of the smallest box enclosing
    both. Values lie in ``(-1, 1]``. Degenerate boxes (``x2 < x1`` or ``y2 < y1``) are refused.

    Raises:
        ValueError: a box with ``x2 < x1`` or ``y2 < y1``.
    """
    _check_xyxy(a)
    _check_xyxy(b)
    return _giou(a, b, _area(a), _area(b))


def _check_xyxy(boxes: Tensor) -> None:
    if bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError("generalized_box_iou needs xyxy boxes with x2 >= x1 and y2 >= y1")


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _giou(a: Tensor, b: Tensor, area_a: Tensor, area_b: Tensor) -> Tensor:
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b - inter
    iou = inter / union
    lt = torch.min(a[:, None, :2], b[:, :2])
    rb = torch.max(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def unit_rows(x: Tensor) -> Tensor:
    """Rows scaled by ``1 / (norm + 1e-12)`` (what :func:`cosine_cost` compares)."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-12)


def cosine_cost(x: Tensor, y: Tensor) -> Tensor:
    """``[len(x), len(y)]`` cosine distances ``1 - cos``; rows scaled by ``1 / (norm + 1e-12)``
    (a zero row has cost 1 to everything)."""
    return 1 - unit_rows(x) @ unit_rows(y).T


def linear_sum_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a ``[R, C]`` cost matrix (scipy's solver).

    Returns:
        ``(rows, cols)`` int64 tensors on the cost's device, ``min(R, C)`` pairs, rows ascending.

    Raises:
        ValueError: a NaN cost, or a matrix where no complete assignment has a finite cost.
    """
    if cost.dim() != 2:
        raise ValueError(f"cost must be a 2-d matrix, got shape {tuple(cost.shape)}")
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=cost.device)
        return empty, empty.clone()
    rows, cols = _scipy_lsa(cost.detach().cpu().numpy())
    return (
        torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(cost.device),
        torch.from_numpy(np.asarray(cols, dtype=np.int64)).to(cost.device),
    )


class Match(NamedTuple):
    """One assignment: pairs ``(rows[k], cols[k])`` and two of their cost terms."""

    rows: Tensor
    cols: Tensor
    #: ``1 - cos`` of the class distributions of each matched pair
    class_cost: Tensor
    #: ``1 - cos`` of the features of each matched pair
    feature_cost: Tensor


class MatchTerms(NamedTuple):
    """One side's per-row terms of the cost (:meth:`HungarianMatcher.terms`): rows of a side
    can be prepared once and indexed (a tracker prepares a video's boxes once, not per frame).
    """

    #: boxes as ``(cx, cy, w, h)``
    cxcywh: Tensor
    #: the same boxes as ``(x1, y1, x2, y2)`` (checked: ``x2 >= x1``, ``y2 >= y1``)
    xyxy: Tensor
    #: their areas
    area: Tensor
    #: class distributions scaled to unit norm (:func:`unit_rows`)
    dists: Tensor
    #: features scaled to unit norm
    features: Tensor

    def rows(self, index: Tensor | slice) -> MatchTerms:
        """The terms of rows ``index``, each a new tensor."""
        return MatchTerms(*(t[index].clone() for t in self))


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets by a weighted class/feature/box cost.

    Args:
        cost_class: weight of ``1 - cos`` between class distributions.
        cost_feature: weight of ``1 - cos`` between features.
        cost_bbox: weight of the L1 distance between ``(cx, cy, w, h)`` boxes.
        cost_giou: weight of ``-GIoU``.
        box_format: how the given boxes are written (``"xywh"`` as DSG-DETR's tracker gives them,
            ``"xyxy"``, or ``"cxcywh"`` as DETR's heads predict them).

    The defaults are DSG-DETR's tracker (``train.py``: ``HungarianMatcher(0.5, 1, 1, 0.5)``).
    Calling it with ``outputs`` and ``targets`` mappings holding ``"boxes"``, ``"features"``
    and ``"dists"`` (rows are predictions resp. targets) returns a :class:`Match`. The
    matcher has no parameters (a model may hold it as a submodule: its state dict is empty).

    Raises:
        ValueError: all weights zero; an unknown box format.
    """

    def __init__(
        self,
        cost_class: float = 0.5,
        cost_feature: float = 1.0,
        cost_bbox: float = 1.0,
        cost_giou: float = 0.5,
        box_format: BoxFormat = "xywh",
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_feature == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all cost weights are 0")
        to_cxcywh(torch.zeros(0, 4), box_format)  # validates the name
        self.cost_class = cost_class
        self.cost_feature = cost_feature
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.box_format: BoxFormat = box_format

    def terms(self, side: Mapping[str, Tensor]) -> MatchTerms:
        """The per-row terms of ``side`` (``"boxes"``, ``"features"``, ``"dists"``).

        Raises:
            ValueError: a degenerate box.
        """
        box = to_cxcywh(side["boxes"], self.box_format)
        xyxy = box_cxcywh_to_xyxy(box)
        _check_xyxy(xyxy)
        return MatchTerms(
            box, xyxy, _area(xyxy), unit_rows(side["dists"]), unit_rows(side["features"])
        )

    def appearance_costs(self, outputs: MatchTerms, targets: MatchTerms) -> tuple[Tensor, Tensor]:
        """``(1 - cos)`` of the class distributions and of the features, unweighted,
        ``[len(outputs), len(targets)]`` each."""
        return 1 - outputs.dists @ targets.dists.T, 1 - outputs.features @ targets.features.T

    def box_costs(self, outputs: MatchTerms, targets: MatchTerms) -> tuple[Tensor, Tensor]:
        """The weighted box terms ``(cost_bbox * L1, cost_giou * -GIoU)``,
        ``[len(outputs), len(targets)]`` each; an entry depends only on its two boxes, so a
        block of a larger matrix equals the matrix of the block's boxes."""
        return (
            self.cost_bbox * torch.cdist(outputs.cxcywh, targets.cxcywh, p=1),
            self.cost_giou * -_giou(outputs.xyxy, targets.xyxy, outputs.area, targets.area),
        )

    def total_cost(
        self, cost_dist: Tensor, cost_feat: Tensor, box_l1: Tensor, box_giou: Tensor
    ) -> Tensor:
        """The cost ``C`` from :meth:`appearance_costs` and :meth:`box_costs`."""
        return self.cost_class * cost_dist + self.cost_feature * cost_feat + box_l1 + box_giou

    def cost_matrix(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(C, class_cost, feature_cost)``, each ``[len(outputs), len(targets)]``."""
        out, tgt = self.terms(outputs), self.terms(targets)
        cost_dist, cost_feat = self.appearance_costs(out, tgt)
        return (
            self.total_cost(cost_dist, cost_feat, *self.box_costs(out, tgt)),
            cost_dist,
            cost_feat,
        )

    @torch.no_grad()
    def match_costs(
        self, cost_dist: Tensor, cost_feat: Tensor, box_l1: Tensor, box_giou: Tensor
    ) -> Match:
        """The assignment from the cost parts (what calling the matcher returns)."""
        total = self.total_cost(cost_dist, cost_feat, box_l1, box_giou)
        rows, cols = linear_sum_assignment(total)
        return Match(rows, cols, cost_dist[rows, cols], cost_feat[rows, cols])

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Match:
        out, tgt = self.terms(outputs), self.terms(targets)
        return self.match_costs(*self.appearance_costs(out, tgt), *self.box_costs(out, tgt))

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_feature={self.cost_feature}, "
            f"cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"box_format={self.box_format!r}"
        )
