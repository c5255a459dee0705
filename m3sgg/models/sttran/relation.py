"""STTran's relation token (``lib/sttran.py``, ``STTran.forward`` up to the transformer).

Per pair (subject ``s``, object ``o``) the token concatenates

- ``subj_fc(f_s)`` and ``obj_fc(f_o)``: the box features projected to ``proj_dim`` (512);
- the union branch: ``union_func1`` (1x1 conv ``union_channels -> conv_dim``) on the union box's
  feature map ``[C, 7, 7]``, plus the two-channel 27x27 masks of :func:`union_masks` through
  ``conv`` (Conv 7x7/2 -> ``conv_dim/2``, ReLU, BatchNorm, MaxPool 3/2, Conv 3x3 -> ``conv_dim``,
  ReLU, BatchNorm), the sum flattened through ``vr_fc`` (``conv_dim*7*7 -> proj_dim``);
- ``obj_embed(label_s)`` and ``obj_embed2(label_o)``: class embeddings (``embed_dim``, 200).

With the paper's widths the token is ``3 * 512 + 2 * 200 = 1936`` wide.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from m3sgg.errors import DataError

__all__ = ["MASK_SIZE", "RelationFeatures", "class_word_vectors", "union_masks"]

#: Side of the pair masks, in cells (the original's ``draw_union_boxes(pair_rois, 27)``).
MASK_SIZE = 27


def union_masks(
    subject_boxes: torch.Tensor, object_boxes: torch.Tensor, size: int = MASK_SIZE
) -> torch.Tensor:
    """Masks ``[P, 2, size, size]`` of each pair's subject (channel 0) and object box (1) in the
    pair's union box, as the original's ``draw_union_boxes(pair_rois, size) - 0.5``.

    The union box is cut into ``size x size`` cells (row = y, column = x); a cell holds the
    fraction of it the box covers, minus 0.5 (so -0.5 outside, 0.5 fully inside). With the box
    scaled into cell units, ``x1' = (x1 - ux1) * size / uw``, the coverage of column ``k`` is
    ``clamp(k + 1 - x1', 0, 1) * clamp(x2' - k, 0, 1)``, and a cell's is its column's times its
    row's. Computed in float32 like the original. Vectorised over pairs.

    Args:
        subject_boxes, object_boxes: ``[P, 4]`` xyxy boxes.
    """
    boxes = torch.stack([subject_boxes, object_boxes], dim=1).to(torch.float32)  # [P, 2, 4]
    lo = torch.minimum(boxes[:, 0, :2], boxes[:, 1, :2])[:, None]  # [P, 1, 2] (x, y)
    hi = torch.maximum(boxes[:, 0, 2:], boxes[:, 1, 2:])[:, None]
    extent = hi - lo
    first = (boxes[..., :2] - lo) * size / extent  # [P, 2, 2]
    last = (boxes[..., 2:] - lo) * size / extent
    cells = torch.arange(size, dtype=torch.float32, device=boxes.device)
    cover = (cells + 1 - first[..., None]).clamp(0, 1) * (last[..., None] - cells).clamp(0, 1)
    # cover: [P, 2 boxes, 2 axes (x, y), size]
    return cover[:, :, 1, :, None] * cover[:, :, 0, None, :] - 0.5


def class_word_vectors(
    path: str | os.PathLike[str], class_names: Sequence[str], dim: int
) -> tuple[torch.Tensor, list[str]]:
    """Read class vectors from a text file of lines ``word v1 v2 … v_dim`` (GloVe style).

    A class takes the vector of its whole (lower-cased) name when the file has it, otherwise the
    mean of the vectors of its parts (``"cup/glass/bottle"`` → cup, glass, bottle; ``"_"`` and
    spaces split too) that the file has. ``__background__`` is never looked up. A first line of
    two integers (word2vec's header) is skipped. Nothing is downloaded.

    Returns:
        ``(vectors [len(class_names), dim] float32, missing class names)``; rows of missing
        classes (and of the background) are zero.

    Raises:
        DataError: the file is missing or a needed line does not hold ``dim`` numbers.
    """
    path = os.fspath(path)
    wholes = [name.lower() for name in class_names]
    parts = [[p for p in re.split(r"[/_ ]+", w) if p] for w in wholes]
    wanted = set(wholes) | {p for ps in parts for p in ps}
    table: dict[str, np.ndarray] = {}
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as err:
        raise DataError(path, f"cannot read word vectors: {err.strerror or err}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            word, _, rest = line.strip().partition(" ")
            if not rest:
                continue
            if number == 1 and word.isdigit() and rest.strip().isdigit():
                continue
            key = word.lower()
            if key not in wanted or key in table:
                continue
            try:
                values = np.array(rest.split(), dtype=np.float32)
            except ValueError:
                raise DataError(path, "non-numeric vector value", field=f"line {number}") from None
            if values.shape[0] != dim:
                raise DataError(
                    path,
                    f"{values.shape[0]} values, expected {dim} (embed_dim)",
                    field=f"line {number} ({word!r})",
                )
            table[key] = values
    vectors = torch.zeros(len(class_names), dim, dtype=torch.float32)
    missing: list[str] = []
    for row, (name, whole, pieces) in enumerate(zip(class_names, wholes, parts, strict=True)):
        if name == "__background__":
            continue
        if whole in table:
            vectors[row] = torch.from_numpy(table[whole])
            continue
        found = [table[p] for p in pieces if p in table]
        if found:
            vectors[row] = torch.from_numpy(np.mean(found, axis=0))
        else:
            missing.append(name)
    return vectors, missing


class RelationFeatures(nn.Module):
    """The relation token of every pair (module docstring).

    ``forward(box_features [N, object_dim], boxes [N, 4] xyxy, labels [N], pair_idx [P, 2],
    union_maps [P, union_channels, 7, 7]) -> [P, 3 * proj_dim + 2 * embed_dim]``.
    """

    def __init__(
        self,
        *,
        object_dim: int,
        union_channels: int,
        num_classes: int,
        proj_dim: int = 512,
        embed_dim: int = 200,
        conv_dim: int = 256,
    ) -> None:
        super().__init__()
        if conv_dim < 2 or conv_dim % 2:
            raise ValueError(f"conv_dim must be an even int >= 2, got {conv_dim}")
        self.conv_dim = conv_dim
        self.union_func1 = nn.Conv2d(union_channels, conv_dim, 1, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(2, conv_dim // 2, kernel_size=7, stride=2, padding=3, bias=True),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(conv_dim // 2, momentum=0.01),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(conv_dim // 2, conv_dim, kernel_size=3, stride=1, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(conv_dim, momentum=0.01),
        )
        self.subj_fc = nn.Linear(object_dim, proj_dim)
        self.obj_fc = nn.Linear(object_dim, proj_dim)
        self.vr_fc = nn.Linear(conv_dim * 7 * 7, proj_dim)
        self.obj_embed = nn.Embedding(num_classes, embed_dim)
        self.obj_embed2 = nn.Embedding(num_classes, embed_dim)
        self.out_dim = 3 * proj_dim + 2 * embed_dim

    def forward(
        self,
        box_features: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        pair_idx: torch.Tensor,
        union_maps: torch.Tensor,
    ) -> torch.Tensor:
        subject, obj = pair_idx[:, 0], pair_idx[:, 1]
        masks = union_masks(boxes[subject], boxes[obj]).to(box_features.dtype)
        union = self.union_func1(union_maps.to(box_features.dtype)) + self.conv(masks)
        visual = self.vr_fc(union.flatten(1))
        return torch.cat(
            [
                self.subj_fc(box_features[subject]),
                self.obj_fc(box_features[obj]),
                visual,
                self.obj_embed(labels[subject]),
                self.obj_embed2(labels[obj]),
            ],
            dim=1,
        )
