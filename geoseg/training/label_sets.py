"""Set-valued labels: "one of these classes", where a source is coarser than the legend.

Two training sources rarely share a legend. Where a source's class covers several legend classes
(the Dubai set's *vegetation* is the legend's *tree* or *low vegetation*), its pixels get a label
code that stands for the set of member classes instead of being dropped. Codes ``0..K-1`` are the
legend's classes; codes ``K..K+S-1`` are the ``S`` sets, in the order the training config first
names them; 255 is ignored. The loss for a set is minus the log of the summed probability of its
members (:class:`geoseg.training.losses.SetCrossEntropy`); for scoring, a set pixel counts as right
when the prediction is one of its members (:meth:`LabelSets.resolve`).

Pure numpy: shared by training, validation and ``geoseg evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelSets:
    """The legend's ``num_classes`` single classes and the class sets some sources label with."""

    num_classes: int
    sets: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.num_classes + len(self.sets) > IGNORE_INDEX:
            raise ValueError(
                f"{self.num_classes} classes and {len(self.sets)} sets exceed 255 codes"
            )
        for members in self.sets:
            if len(members) < 2 or any(not 0 <= m < self.num_classes for m in members):
                raise ValueError(f"a label set needs two or more class ids, got {members}")

    @property
    def num_codes(self) -> int:
        """Label codes in use: classes, then sets."""
        return self.num_classes + len(self.sets)

    def code_for(self, members: Sequence[int]) -> int:
        """The code of one class (its id) or of a set of classes (which must be known)."""
        unique = tuple(sorted(set(int(m) for m in members)))
        if len(unique) == 1:
            return unique[0]
        return self.num_classes + self.sets.index(unique)

    def members(self, code: int) -> tuple[int, ...]:
        """The classes code ``code`` stands for."""
        if code < self.num_classes:
            return (code,)
        return self.sets[code - self.num_classes]

    def membership(self) -> npt.NDArray[np.bool_]:
        """``(num_codes, num_classes)``: which classes each code allows."""
        table = np.zeros((self.num_codes, self.num_classes), dtype=bool)
        for code in range(self.num_codes):
            table[code, list(self.members(code))] = True
        return table

    def resolve(
        self, truth: npt.NDArray[np.uint8], predicted: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.uint8]:
        """Truth with each set pixel made a single class, for a confusion matrix.

        A set pixel becomes the predicted class when that is one of the set's members (the label
        allowed it), else the set's first member (the prediction is wrong whatever the truth).
        """
        if not self.sets:
            return truth
        out = truth.copy()
        for i, members in enumerate(self.sets):
            where = truth == self.num_classes + i
            if not where.any():
                continue
            allowed = np.isin(predicted[where], members)
            out[where] = np.where(allowed, predicted[where], members[0]).astype(np.uint8)
        return out


def with_sets(
    num_classes: int, groups: Sequence[Sequence[int]], *, start: LabelSets | None = None
) -> LabelSets:
    """``start`` (or no sets) extended by every multi-class group not yet known, in order."""
    sets = list(start.sets if start is not None else ())
    for group in groups:
        unique = tuple(sorted(set(int(m) for m in group)))
        if len(unique) > 1 and unique not in sets:
            sets.append(unique)
    return LabelSets(num_classes, tuple(sets))


def merged_classes(
    names: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> tuple[list[int], list[str]]:
    """Where each class goes when groups of class names are merged, and the merged names.

    The merged class takes the place of its first member; classes in no group stay as they are.

    Raises:
        ValueError: for a name that is not a class, or a class in two groups.
    """
    target: dict[int, str] = {}
    for merged, members in groups.items():
        for name in members:
            if name not in names:
                raise ValueError(f"cannot merge {name!r}: the classes are {list(names)}")
            if names.index(name) in target:
                raise ValueError(f"class {name!r} is in two merged groups")
            target[names.index(name)] = merged
    new_names: list[str] = []
    index: list[int] = []
    for i, name in enumerate(names):
        label = target.get(i, name)
        if label not in new_names:
            new_names.append(label)
        index.append(new_names.index(label))
    return index, new_names


def merge_confusion(
    cm: npt.NDArray[np.int64], names: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """A confusion matrix over coarser classes: each group of class names summed into one.

    E.g. ``{"vegetation": ["tree", "low_vegetation"]}`` scores a 6-class model on 5 classes (see
    :func:`merged_classes`).

    Raises:
        ValueError: for a name that is not a class, or a class in two groups.
    """
    index, new_names = merged_classes(names, groups)
    k = len(new_names)
    out = np.zeros((k, k), dtype=np.int64)
    idx = np.asarray(index)
    np.add.at(out, (idx[:, None], idx[None, :]), cm)
    return out, new_names
