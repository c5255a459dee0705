"""Vocabularies: Action Genome classes and predicates (both spellings), EASG edge labels.

Action Genome writes names two ways. The text files ``object_classes.txt`` and
``relationship_classes.txt`` use a *squashed* spelling (``closetcabinet``, ``lookingat``) while
the annotation pickles use the *readable* one (``closet/cabinet``, ``looking_at``). m3sgg uses the
readable spelling everywhere and maps squashed names with :func:`squash`.

Index conventions (the STTran/TEMPURA protocol the metrics reproduce):

- object classes: 37, index 0 is ``__background__``, 1 is ``person``;
- predicates: 26 in one list, attention ``[0:3]``, spatial ``[3:9]``, contacting ``[9:26]``;
  a group-local index ``i`` of group ``g`` has the global id ``PREDICATE_OFFSETS[g] + i``.
"""

from __future__ import annotations

__all__ = [
    "AG_ATTENTION",
    "AG_CONTACTING",
    "AG_OBJECT_CLASSES",
    "AG_PREDICATES",
    "AG_SPATIAL",
    "EASG_RELATIONS",
    "GROUP_SIZES",
    "NUM_AG_CLASSES",
    "NUM_AG_PREDICATES",
    "PREDICATE_GROUPS",
    "PREDICATE_OFFSETS",
    "squash",
]

AG_OBJECT_CLASSES: tuple[str, ...] = (
    "__background__",
    "person",
    "bag",
    "bed",
    "blanket",
    "book",
    "box",
    "broom",
    "chair",
    "closet/cabinet",
    "clothes",
    "cup/glass/bottle",
    "dish",
    "door",
    "doorknob",
    "doorway",
    "floor",
    "food",
    "groceries",
    "laptop",
    "light",
    "medicine",
    "mirror",
    "paper/notebook",
    "phone/camera",
    "picture",
    "pillow",
    "refrigerator",
    "sandwich",
    "shelf",
    "shoe",
    "sofa/couch",
    "table",
    "television",
    "towel",
    "vacuum",
    "window",
)

AG_ATTENTION: tuple[str, ...] = ("looking_at", "not_looking_at", "unsure")
AG_SPATIAL: tuple[str, ...] = (
    "above",
    "beneath",
    "in_front_of",
    "behind",
    "on_the_side_of",
    "in",
)
AG_CONTACTING: tuple[str, ...] = (
    "carrying",
    "covered_by",
    "drinking_from",
    "eating",
    "have_it_on_the_back",
    "holding",
    "leaning_on",
    "lying_on",
    "not_contacting",
    "other_relationship",
    "sitting_on",
    "standing_on",
    "touching",
    "twisting",
    "wearing",
    "wiping",
    "writing_on",
)
AG_PREDICATES: tuple[str, ...] = AG_ATTENTION + AG_SPATIAL + AG_CONTACTING

#: Predicate groups in global order, with the global id of each group's first predicate.
PREDICATE_GROUPS: tuple[str, ...] = ("attention", "spatial", "contacting")
PREDICATE_OFFSETS: dict[str, int] = {"attention": 0, "spatial": 3, "contacting": 9}
GROUP_SIZES: dict[str, int] = {"attention": 3, "spatial": 6, "contacting": 17}

NUM_AG_CLASSES = len(AG_OBJECT_CLASSES)  # 37
NUM_AG_PREDICATES = len(AG_PREDICATES)  # 26

#: The 13 EASG edge labels in index order (``relationships.txt`` of the release).
EASG_RELATIONS: tuple[str, ...] = (
    "around",
    "dobj",
    "from",
    "in",
    "inside",
    "into",
    "on",
    "onto",
    "through",
    "to",
    "towards",
    "under",
    "with",
)


def squash(name: str) -> str:
    """Text-file spelling of an AG name: ``"cup/glass/bottle"`` → ``"cupglassbottle"``."""
    return name.replace("/", "").replace("_", "")
