"""Region proposal network and proposal layer of the Action Genome detector (test-time rules).

The RPN (Ren et al., 2015) slides a 3x3 convolution (+ ReLU) over the stride-16 base map, then two
1x1 convolutions score ``A`` anchors per cell (``2A`` channels: the ``A`` background logits, then
the ``A`` foreground logits; a softmax over each (background, foreground) pair) and regress one
delta per anchor (``4A`` channels). The proposal layer, per image, as the original at test time:

1. decode every anchor's delta and clip the box to the image (``im_info`` height and width);
2. sort by foreground probability, descending (stable: ties keep anchor order), keep the first
   ``pre_nms_top_n`` (6000);
3. NMS at ``nms_threshold`` (0.7) by the Faster R-CNN kernel rule (:func:`m3sgg.ops.nms`);
4. keep the first ``post_nms_top_n`` (100, the AG detector's test config) and pad with zero
   boxes to exactly ``post_nms_top_n`` rows. The padding rows are real rois downstream (the
   original classifies them too), so they are kept.

No minimum box size is applied (the original's filter is commented out).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from m3sgg.detection.boxes import base_anchors, clip_boxes, decode_boxes, shifted_anchors
from m3sgg.ops.nms import nms

__all__ = ["RPN"]


class RPN(nn.Module):
    """Anchors, scores and deltas to ``post_nms_top_n`` proposals per image.

    Args:
        in_channels: channels of the base map.
        mid_channels: width of the 3x3 convolution (512 in the original).
        stride: the base map's stride in pixels (16).
        pre_nms_top_n, post_nms_top_n, nms_threshold: the proposal rules above.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int = 512,
        stride: int = 16,
        pre_nms_top_n: int = 6000,
        post_nms_top_n: int = 100,
        nms_threshold: float = 0.7,
    ) -> None:
        super().__init__()
        anchors = base_anchors()
        self.num_anchors = anchors.shape[0]
        self.register_buffer("anchors", anchors, persistent=False)
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls_score = nn.Conv2d(mid_channels, 2 * self.num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * self.num_anchors, 1)
        self.stride = stride
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_threshold = nms_threshold

    def forward(self, base: Tensor, im_info: Tensor) -> Tensor:
        """Proposals ``[B, post_nms_top_n, 5]`` rows ``(b, x1, y1, x2, y2)`` in input pixels.

        ``im_info`` is ``[B, 3]`` rows ``(height, width, scale)`` of the (resized) images.
        """
        batch, _, height, width = base.shape
        hidden = torch.relu(self.conv(base))
        # Scores and box arithmetic in float32 even when the convolutions run in half precision
        # (coordinates up to ~1000 pixels need float32's resolution).
        logits = self.cls_score(hidden).float()  # [B, 2A, H, W]
        a = self.num_anchors
        # Softmax over (background, foreground) of each anchor; keep the foreground column.
        fg = torch.softmax(torch.stack([logits[:, :a], logits[:, a:]], dim=0), dim=0)[1]
        scores = fg.permute(0, 2, 3, 1).reshape(batch, -1)  # [B, H*W*A]
        deltas = self.bbox_pred(hidden).float().permute(0, 2, 3, 1).reshape(batch, -1, 4)
        anchors = shifted_anchors(self.anchors, height, width, self.stride)
        proposals = decode_boxes(anchors[None].expand(batch, -1, -1), deltas)
        info = im_info.to(proposals.dtype)
        proposals = clip_boxes(proposals, info[:, 0:1], info[:, 1:2])
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        if 0 < self.pre_nms_top_n < scores.shape[1]:
            order = order[:, : self.pre_nms_top_n]
        out = proposals.new_zeros(batch, self.post_nms_top_n, 5)
        out[:, :, 0] = torch.arange(batch, dtype=out.dtype, device=out.device)[:, None]
        for i in range(batch):
            boxes = proposals[i, order[i]]
            keep = nms(boxes, scores[i, order[i]], self.nms_threshold, self.post_nms_top_n)
            out[i, : keep.shape[0], 1:] = boxes[keep]
        return out
