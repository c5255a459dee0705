"""m3sgg: a training engine for video scene graph generation on pytorch-ignite.

Reads Action Genome and EASG as they are on disk, evaluates with metrics that reproduce the
community's reference evaluators exactly, and trains models through an event-driven engine.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
