"""Which contact state, prior and key frames each relation uses: STKET's history rules, vectorised.

The original walks the relations of a video one by one (``lib/transformer.py``, temporal and
ensemble decoders) keeping, per object label and frame, the *state* of one relation: its contact
set and its feature. Which relation holds the state of ``(frame, label)``:

- training, and predcls evaluation (``scores=None`` here): the latest relation processed, so a
  relation sees its own state and later frames see the frame's last relation of that label;
- sgcls/sgdet evaluation: the relation with the highest object score so far (a later one must
  score strictly higher), so a relation sees the best of the prefix and later frames the best of
  the frame (the first one on ties).

The contact set of a relation (:func:`contact_sets`): ``{8}`` (not_contacting) when the arg-max of
its predicted contact distribution is 8, else the contacts predicted at or above the threshold
without 8; with threshold 1.0, its ground-truth contacts.

Previous frame of a relation (:func:`previous_frames`): the latest earlier frame of the same video
where its label has a state, used only when at most 2 frames back. Key frames
(:func:`key_frames`): the relation's own frame, then previous frames chained back while each step
is at most 2 frames, up to ``window`` frames.

Everything here is vectorised over the relations of a batch of videos (frames carry batch-level
indices; videos are runs of consecutive frames); ``tests/models/test_stket_selection.py`` checks
it against a per-relation loop written after the original.
"""

from __future__ import annotations

import torch

__all__ = [
    "NOT_CONTACTING",
    "contact_sets",
    "final_states",
    "key_frame_sources",
    "key_frames",
    "previous_frames",
    "prior_sources",
    "state_holders",
]

#: Index of ``not_contacting`` among the 17 contacting predicates.
NOT_CONTACTING = 8

#: How many frames back a previous state may be.
MAX_GAP = 2


def contact_sets(
    contact: torch.Tensor, threshold: float, ground_truth: torch.Tensor | None = None
) -> torch.Tensor:
    """bool ``[R, 17]``: each relation's contact set.

    Args:
        contact: ``[R, 17]`` predicted contact probabilities.
        threshold: the prediction threshold; ``1.0`` selects the ground-truth contacts.
        ground_truth: ``[R, 17]`` multi-hot ground-truth contacts (needed for ``1.0``).
    """
    if threshold == 1.0:
        if ground_truth is None:
            raise ValueError("a contact threshold of 1.0 selects ground-truth contacts: none given")
        return ground_truth > 0
    sets = contact >= threshold
    sets[:, NOT_CONTACTING] = False
    idle = contact.argmax(dim=1) == NOT_CONTACTING
    only_idle = torch.zeros_like(sets)
    only_idle[:, NOT_CONTACTING] = True
    return torch.where(idle[:, None], only_idle, sets)


def state_holders(
    frame: torch.Tensor, label: torch.Tensor, scores: torch.Tensor | None
) -> torch.Tensor:
    """int64 ``[R]``: the relation holding the state of ``(frame[r], label[r])`` when ``r`` is
    processed (relations are processed in index order).

    Args:
        frame: ``[R]`` batch-level frame of each relation.
        label: ``[R]`` object label of each relation.
        scores: ``[R]`` object scores (sgcls/sgdet evaluation), or None (latest relation wins).
    """
    count = frame.shape[0]
    if scores is None or count == 0:
        return torch.arange(count, device=frame.device)
    key = frame * (int(label.max()) + 1) + label
    order = torch.sort(key, stable=True).indices
    group = torch.unique_consecutive(key[order], return_inverse=True)[1]
    value = scores[order].double()
    low = value.min()
    span = float(value.max() - low) + 1.0
    # each group on its own band, so a running max over all groups restarts in every group
    banded = group.double() * span + (value - low)
    running = torch.cummax(banded, dim=0).values
    first = torch.searchsorted(running, running, side="left")  # where that max was first reached
    holder = torch.empty_like(order)
    holder[order] = order[first]
    return holder


def final_states(
    frame: torch.Tensor, label: torch.Tensor, holder: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """int64 ``[F, C]``: the relation holding the state of each ``(frame, label)`` once its frame
    is done (``-1`` where the label has no relation in the frame)."""
    table = torch.full(shape, -1, dtype=torch.int64, device=frame.device)
    if frame.numel() == 0:
        return table
    key = frame * shape[1] + label
    order = torch.sort(key, stable=True).indices
    last = torch.ones_like(order, dtype=torch.bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    ends = order[last]
    table[frame[ends], label[ends]] = holder[ends]
    return table


def previous_frames(present: torch.Tensor, frame_video: torch.Tensor) -> torch.Tensor:
    """int64 ``[F, C]``: for frame ``f`` and label ``l``, the latest earlier frame of the same
    video where ``l`` has a state (``present[f', l]``), or ``-1``.

    Args:
        present: bool ``[F, C]``.
        frame_video: ``[F]`` video of each frame (videos are runs of consecutive frames).
    """
    num_frames = present.shape[0]
    ids = torch.arange(num_frames, device=present.device)
    seen = torch.where(present, ids[:, None], torch.full_like(ids[:, None], -1))
    upto = torch.cummax(seen, dim=0).values  # latest frame <= f with a state
    prev = torch.full_like(upto, -1)
    prev[1:] = upto[:-1]
    start = _video_starts(frame_video)
    return torch.where(prev >= start[:, None], prev, torch.full_like(prev, -1))


def _video_starts(frame_video: torch.Tensor) -> torch.Tensor:
    """int64 ``[F]``: the first frame of each frame's video."""
    ids = torch.arange(frame_video.shape[0], device=frame_video.device)
    new = torch.ones_like(frame_video, dtype=torch.bool)
    new[1:] = frame_video[1:] != frame_video[:-1]
    return torch.cummax(torch.where(new, ids, torch.zeros_like(ids)), dim=0).values


def key_frames(
    frame: torch.Tensor, label: torch.Tensor, previous: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each relation's key frames, newest first.

    Returns:
        ``frames`` int64 ``[R, window]``: column 0 is the relation's own frame, column ``k`` the
        ``k``-th previous key frame (``-1`` past the chain's end); ``count`` int64 ``[R]``: how
        many columns are used.
    """
    count = frame.shape[0]
    frames = torch.full((count, window), -1, dtype=torch.int64, device=frame.device)
    frames[:, 0] = frame
    alive = torch.ones(count, dtype=torch.bool, device=frame.device)
    current = frame
    for k in range(1, window):
        back = previous[current, label]
        alive = alive & (back >= 0) & (current - back <= MAX_GAP)
        frames[:, k] = torch.where(alive, back, torch.full_like(back, -1))
        current = torch.where(alive, back, current)
    return frames, (frames >= 0).sum(dim=1)


def prior_sources(
    frame: torch.Tensor,
    label: torch.Tensor,
    scores: torch.Tensor | None,
    frame_video: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The relations whose contact sets pick each relation's two priors.

    Returns:
        ``current`` int64 ``[R]``: the state holder of the relation's own frame and label (its
        specific prior in the temporal windows); ``previous`` int64 ``[R]``: the final holder of
        the previous frame's state when at most 2 frames back, else ``current`` (its temporal
        prior).
    """
    holder = state_holders(frame, label, scores)
    final = final_states(frame, label, holder, (frame_video.shape[0], num_classes))
    back = previous_frames(final >= 0, frame_video)[frame, label]
    use_back = (back >= 0) & (frame - back <= MAX_GAP)
    return holder, torch.where(use_back, final[back.clamp(min=0), label], holder)


def key_frame_sources(
    frame: torch.Tensor,
    label: torch.Tensor,
    scores: torch.Tensor | None,
    frame_video: torch.Tensor,
    num_classes: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The relations whose features fill each relation's key-frame window, oldest first.

    Returns:
        ``rows`` int64 ``[R, window]``: slot ``s`` holds the state holder of the ``s``-th key
        frame counted from the oldest (the relation's own frame last; ``-1`` past ``used``);
        ``used`` int64 ``[R]``.
    """
    holder = state_holders(frame, label, scores)
    final = final_states(frame, label, holder, (frame_video.shape[0], num_classes))
    previous = previous_frames(final >= 0, frame_video)
    frames, used = key_frames(frame, label, previous, window)
    newest_first = final[frames.clamp(min=0), label[:, None]]
    newest_first[:, 0] = holder
    slots = torch.arange(window, device=frame.device)
    k = used[:, None] - 1 - slots[None, :]  # slot s holds the (used-1-s)-th newest key frame
    rows = torch.gather(newest_first, 1, k.clamp(min=0))
    return torch.where(k >= 0, rows, torch.full_like(rows, -1)), used
