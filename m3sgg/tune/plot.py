"""The study in visdom (``m3sgg tune --visdom``): each finished trial's value, and the best so far.

One window in env ``<study>-study``, redrawn after every finished trial from the study database
(so a resumed study, or several workers, always show every trial): the value of each complete
trial against its number (markers), the best-so-far curve (a line), and the last reported value
of each pruned trial (markers of their own).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["StudyPlot", "study_curves"]

logger = logging.getLogger("m3sgg")

WINDOW = "study_values"


def study_curves(study: Any) -> dict[str, tuple[list[int], list[float]]]:
    """``{"complete": (numbers, values), "pruned": (...), "best so far": (...)}``."""
    from optuna.trial import TrialState

    maximize = study.direction.name.lower() == "maximize"
    complete: tuple[list[int], list[float]] = ([], [])
    pruned: tuple[list[int], list[float]] = ([], [])
    best: tuple[list[int], list[float]] = ([], [])
    current: float | None = None
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            complete[0].append(trial.number)
            complete[1].append(trial.value)
            if current is None or (trial.value > current if maximize else trial.value < current):
                current = trial.value
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            pruned[0].append(trial.number)
            pruned[1].append(trial.intermediate_values[max(trial.intermediate_values)])
        if current is not None:
            best[0].append(trial.number)
            best[1].append(current)
    return {"complete": complete, "pruned": pruned, "best so far": best}


class StudyPlot:
    """Draws :func:`study_curves` into ``env`` on the visdom server at ``url``.

    Raises:
        VisdomUnavailable: nothing answers at ``url`` when it is built.
    """

    def __init__(self, url: str, env: str):
        from m3sgg.engine.handlers.visdom import open_logger

        self.env = env
        self.vis = open_logger(url, env, num_workers=0).vis
        self._warned = False

    def update(self, study: Any) -> None:
        """Redraw the window; a server that went away costs one warning, not the study."""
        curves = study_curves(study)
        metric = study.user_attrs.get("m3sgg:metric", "value")
        try:
            first = True
            for name, (x, y) in curves.items():
                if not x:
                    continue
                line = name == "best so far"
                self.vis.line(
                    X=np.asarray(x, dtype=float),
                    Y=np.asarray(y, dtype=float),
                    win=WINDOW,
                    env=self.env,
                    name=name,
                    update=None if first else "replace",
                    opts={
                        "title": f"{study.study_name}: {metric} per trial",
                        "xlabel": "trial",
                        "ylabel": metric,
                        "markers": not line,
                        "mode": "lines" if line else "markers",
                        "showlegend": True,
                    },
                )
                first = False
        except Exception as err:  # the study goes on without its plot
            if not self._warned:
                logger.warning("visdom: the study plot could not be sent (%s)", err)
                self._warned = True
