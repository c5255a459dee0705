"""m3sgg's custom events and the training loop they punctuate.

The train engine is a plain ignite :class:`~ignite.engine.Engine` whose process function is
:meth:`Trainer.train_step <m3sgg.engine.trainer.Trainer.train_step>`. Around ignite's own events
m3sgg fires :class:`M3sggEvents`. The loop, with the default handlers in the order they run
(``trainer.describe()`` prints the live table)::

    STARTED
        save_config         <run>/config.yaml (after a resume was accepted)
    for each epoch:
        EPOCH_STARTED
            sampler_position    the sampler yields this epoch's shuffle from the right offset
        for each batch:
            ITERATION_STARTED
                resume_rng      (first step after a resume) restore the RNG states, last
                lr_schedule     (warmup or cosine, when configured) per-iteration lr
            train_step           forward, model.loss, weighted sum, then:
                FORWARD_COMPLETED   (handlers a model contributes, e.g. TEMPURA's uncertainty
                                    pass) after the loss, before backward
                                 backward, then per optimizer step: unscale (fp16), grad norm,
                                 BEFORE_OPTIMIZER_STEP, clip, step
            ITERATION_COMPLETED
                nan_guard        non-finite loss: save, stop, name the iteration and loss term
                loss_tracker     running means of every loss term since the last evaluation
                evaluation       (every train.eval_every_iters) as below
                console          every log.every_iters: one line of losses
                last_checkpoint  (every checkpoint.every_iters) last.pt, resumable
                graceful_stop    (CLI) SIGINT/SIGTERM: save last.pt and stop
        EPOCH_COMPLETED
            evaluation          run the evaluator engine, then fire EVALUATION_COMPLETED:
                EVALUATION_COMPLETED
                    lr_plateau      ReduceLROnPlateau on schedule.metric
                    best_checkpoint best-<metric> files, top checkpoint.keep per metric
                    early_stopping  stop after train.early_stop_patience bad evaluations
                    metrics_file    one JSON line in <run>/metrics.jsonl
                    console         the evaluation's headline numbers
                    visdom          (log.visdom) curves and the per-predicate bar chart
            last_checkpoint     last.pt (atomic, durable; what --resume auto reads)
    COMPLETED

Evaluation results live in ``trainer.engine.state.eval_metrics`` (the evaluator engine's
``state.metrics``: ``"with/R@20"``, ``"no/mR@50"``, ...).
"""

from __future__ import annotations

from ignite.engine import EventEnum

__all__ = ["M3sggEvents"]


class M3sggEvents(EventEnum):
    """Events m3sgg fires on the train engine (register handlers on them like ignite's)."""

    #: inside ``train_step`` after backward, before clipping and ``optimizer.step()`` (once per
    #: optimizer step under accumulation): every parameter's ``.grad`` is present and unscaled
    #: (fp16), ``engine.state.grad_norm`` holds their L2 norm before clipping
    BEFORE_OPTIMIZER_STEP = "before_optimizer_step"
    #: after each evaluation, once ``engine.state.eval_metrics`` holds its results
    EVALUATION_COMPLETED = "evaluation_completed"
    #: after a checkpoint file is durably on disk; ``engine.state.last_checkpoint`` is its path
    CHECKPOINT_SAVED = "checkpoint_saved"
    #: inside a training step, after the forward pass and ``model.loss``, before backward;
    #: ``engine.state.step_batch`` is the batch as the model saw it (on its device)
    FORWARD_COMPLETED = "forward_completed"
