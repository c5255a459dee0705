"""STTran, exactly as published (Cong et al., ICCV 2021), as a package of reusable pieces.

- :mod:`.relation`: the relation token (projections, union branch, computed masks, embeddings);
- :mod:`.transformer`: the spatial encoder and the two-frame-window temporal decoder;
- :mod:`.classifier`: the object classifier and the evaluation labelling (sgcls);
- :mod:`.postprocess`: the detections STTran relates in sgdet evaluation (``sgdet_boxes``);
- :mod:`.model`: :class:`STTran` composing them, and its losses;
- :mod:`.convert`: the original's checkpoint layout; ``import_original("sttran", source,
  mode=...)`` (registered here) returns our model with those weights.

Models built on STTran import these modules (composition), never copy them.
"""

from m3sgg.models.originals import register_original
from m3sgg.models.sttran.convert import import_sttran, original_state_dict
from m3sgg.models.sttran.model import STTran, per_video_mean
from m3sgg.models.sttran.postprocess import SgdetBoxes, sgdet_boxes
from m3sgg.models.sttran.relation import (
    MASK_SIZE,
    RelationFeatures,
    class_word_vectors,
    union_masks,
)
from m3sgg.models.sttran.transformer import (
    DecoderLayer,
    EncoderLayer,
    MultiheadAttention,
    SpatialEncoder,
    TemporalDecoder,
)

__all__ = [
    "MASK_SIZE",
    "DecoderLayer",
    "EncoderLayer",
    "MultiheadAttention",
    "RelationFeatures",
    "STTran",
    "SgdetBoxes",
    "SpatialEncoder",
    "TemporalDecoder",
    "class_word_vectors",
    "import_sttran",
    "original_state_dict",
    "per_video_mean",
    "sgdet_boxes",
    "union_masks",
]

register_original("sttran", import_sttran)
