"""Action Genome scene-graph recall: R@K, mR@K and per-predicate recall as STTran/TEMPURA report.

The numbers equal those of STTran's ``BasicSceneGraphEvaluator`` (R@K) and of TEMPURA's evaluator
(mR@K, per-predicate recall) on the same predictions. One sample is one **video**.

Per frame::

    GT relations      object m: (person, m, a), (m, person, 3+s) for each spatial s (reversed),
                      (person, m, 9+c) for each contacting c           -> 26 global predicate ids
    candidate rows    the frame's pairs three times: attention (columns 0-2), spatial with the
                      pair reversed (3-8), contacting (9-25); zeros outside a row's group
    with              one prediction per row: argmax column (lowest on ties), score = row max
                      (so an all-zero row predicts predicate 0 with score 0)
    semi (t)          rows with col0+col1 > 0: their argmax; else rows with col3+col4 > 0 or
                      col9+col10 > 0: every column with value > t (float64); else nothing
    no                every cell; the top 100 by float32(subject_score * object_score) * cell
    triplet score     subject_score * object_score * predicate_score (float64), ranked descending
    match             same subject class, predicate and object class, subject IoU and object IoU
                      >= iou_threshold ("+1 pixel" IoU, float64); no one-to-one assignment
    R@K of the frame  GT relations recalled by the top K predictions / GT relations

Dtypes follow the reference: the attention logits go through ``torch.softmax(dim=1)`` in float32
on the CPU, then all probabilities are widened to float64 (a model whose attention output is
already a distribution, TEMPURA's mixture heads, gives ``attention_probabilities`` instead: taken
as is, widened, never softmaxed again, as TEMPURA's evaluator does); boxes and object scores are
float32 widened to float64 (their product is rounded to float32 only for the ``no`` top-100 cut).

Aggregation: ``R@K`` is the mean over all evaluated frames of all videos; ``per_predicate[K][p]``
is ``hits[p] / (count[p] + 1e-10)`` with hits and counts summed over the whole evaluation (the
``1e-10`` is TEMPURA's), and ``mR@K`` is their sum divided by 26 (predicates without ground truth
count 0). State is per video and is cleared by ``reset()``, so mR does not drift across epochs.

Behaviours the reference leaves open:

* **Frames without any GT relation** (impossible in the AG protocol) are skipped: they are in
  neither the R@K average nor the mR counts, and are counted in ``frames_without_gt``. A frame
  with GT but without predicted pairs is evaluated and has recall 0.
* **Ties.** The reference ranks with an unstable sort, so equal scores straddling a cut make its
  result platform-dependent. Here the ranking is stable: equal scores keep the reference's
  candidate order (attention rows, spatial rows, contacting rows, each in pair order, columns
  ascending); in ``no``, the top-100 cut keeps that order among equal cut scores and the final
  ranking keeps the cut's order, i.e. it sorts by (triplet score desc, cut score desc, order).
* Pairs whose ``im_idx`` is not a frame of the ground truth are ignored, as in the reference.

Implementation: no Python loop per frame or per relation. ``update`` checks a video and copies
it once, straight into batch-wide tables (frames, boxes and objects renumbered); the pending
videos are evaluated together when they reach about ``_BATCH_SIZE`` pairs + frames, and at
``compute()``. The tables and the few large temporaries are reused from batch to batch (fresh
memory costs a page fault per 4 KiB, more than the arithmetic on it). Matching is done once per
batch, whatever the constraints: a candidate recalls a GT relation iff its predicate is the
relation's and its (pair, direction) matches the relation's object (classes and IoUs), so every
GT relation gets the keys ``(direction, pair, predicate)`` that would recall it (usually one).
Each constraint then ranks its
candidates within their frames (a padded frame × candidate table sorted row-wise; rows with
equal scores re-sorted stably) and a relation is recalled at K iff its best key ranks below K.

Modules: :mod:`.tables` (checked inputs, the pending videos), :mod:`.batch` (matching, shared by
the constraints), :mod:`.ranking` (per-constraint ranks, per-video rows, summaries),
:mod:`.recall` (the metrics).
"""

from m3sgg.metrics.action_genome.recall import ActionGenomeRecall, ActionGenomeRecallSuite
from m3sgg.metrics.action_genome.tables import AG_CONSTRAINTS, AG_MODES, NO_CONSTRAINT_TOP

__all__ = [
    "AG_CONSTRAINTS",
    "AG_MODES",
    "NO_CONSTRAINT_TOP",
    "ActionGenomeRecall",
    "ActionGenomeRecallSuite",
]
