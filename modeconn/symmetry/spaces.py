"""Channel spaces: a union-find over unit sets that can also be split.

A *space* is a set of ``size`` units that must be permuted together. Spaces are merged when the
function couples them (a residual addition merges the spaces of its operands) and split when
only part of a space flows somewhere (``x[:, :k]``): splitting a space splits every space merged
with it at the same offset, so merged spaces always stay identical unit by unit.

A *layout* describes one tensor axis: a tuple of segments ``(space, inner)``, where a segment
covers ``space.size * inner`` consecutive indices and unit ``c`` of the space owns indices
``c * inner ... c * inner + inner - 1`` (``inner > 1`` after flattening ``(C, H, W)`` into one
axis). ``None`` marks an axis no permutation may touch (batch, spatial, model input).

A :class:`TensorLayout` gives the layout of every axis of one tensor in the graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from modeconn.errors import SymmetryError
from modeconn.symmetry.spec import Fix

__all__ = ["Space", "SpaceGraph", "Segment", "Layout", "TensorLayout", "layout_size"]

MAX_REASONS = 4


@dataclass(eq=False)
class Space:
    size: int
    label: str
    producer: bool  # this space holds a layer's output units (names groups)
    start: int = 0  # offset of this piece within the space it was split from (for names)
    parent: Space | None = None  # union-find parent
    children: tuple[Space, ...] = ()  # set once the space has been split
    members: list[Space] = field(default_factory=list)  # on roots: the leaves of the class
    fixed: list[Fix] = field(default_factory=list)  # on roots: why the class may not be permuted
    has_producer: bool = False  # on roots: some member holds a layer's output units
    split_from: Space | None = None  # the space this one is a piece of
    uid: int = 0

    def __repr__(self) -> str:
        return f"Space#{self.uid}({self.label}[{self.start}:{self.start + self.size}])"


Segment = tuple[Space, int]
Layout = tuple[Segment, ...]


class TensorLayout:
    """The shape of one tensor in the graph and the layout of each of its axes.

    ``uniform`` marks a tensor whose elements are all equal (``zeros_like``, ``new_zeros``):
    no permutation changes it, so it couples nothing it meets.
    """

    __slots__ = ("shape", "layouts", "uniform")

    def __init__(
        self, shape: Sequence[int], layouts: Sequence[Layout | None] | None = None, uniform: bool = False
    ):
        self.shape = tuple(shape)
        layouts = tuple(layouts) if layouts is not None else (None,) * len(self.shape)
        if len(layouts) != len(self.shape):
            raise SymmetryError(f"{len(layouts)} axis layouts given for a tensor of shape {self.shape}")
        # size-1 axes carry no permutation (broadcast, keepdim reductions)
        self.layouts = tuple(None if n == 1 else lay for n, lay in zip(self.shape, layouts))
        self.uniform = uniform

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, axis: int) -> Layout | None:
        return self.layouts[axis]

    def replace(self, axis: int, layout: Layout | None) -> TensorLayout:
        layouts = list(self.layouts)
        layouts[axis] = layout
        return TensorLayout(self.shape, layouts)

    def __repr__(self) -> str:
        spaces = [None if lay is None else len(lay) for lay in self.layouts]
        return f"TensorLayout({self.shape}, {spaces}{', uniform' if self.uniform else ''})"


def layout_size(layout: Layout) -> int:
    return sum(s.size * inner for s, inner in layout)


class SpaceGraph:
    """Creates, merges, splits and fixes spaces."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []

    def new(self, size: int, label: str, producer: bool, start: int = 0) -> Space:
        s = Space(size, label, producer, start, uid=len(self.spaces), has_producer=producer)
        s.members = [s]
        self.spaces.append(s)
        return s

    def find(self, s: Space) -> Space:
        root = s
        while root.parent is not None:
            root = root.parent
        while s.parent is not None:  # path compression
            s.parent, s = root, s.parent
        return root

    def leaves(self, s: Space) -> list[Space]:
        if not s.children:
            return [s]
        return [leaf for c in s.children for leaf in self.leaves(c)]

    def resolve(self, layout: Layout) -> Layout:
        """The layout in terms of current (unsplit) spaces."""
        return tuple((leaf, inner) for s, inner in layout for leaf in self.leaves(s))

    def union(self, a: Space, b: Space) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is rb:
            return
        if len(ra.members) < len(rb.members):
            ra, rb = rb, ra
        rb.parent = ra
        ra.members += rb.members
        rb.members = []
        ra.has_producer = ra.has_producer or rb.has_producer
        for reason in rb.fixed:
            self._add_reason(ra, reason)

    def split(self, s: Space, offset: int) -> None:
        """Split the class of leaf ``s`` at ``offset``: every member becomes two pieces."""
        assert not s.children and 0 < offset < s.size, (s, offset)
        root = self.find(s)
        heads, tails = [], []
        for m in root.members:
            head = self.new(offset, m.label, m.producer, m.start)
            tail = self.new(m.size - offset, m.label, m.producer, m.start + offset)
            head.split_from = tail.split_from = m
            m.children = (head, tail)
            heads.append(head)
            tails.append(tail)
        for pieces in (heads, tails):
            for p in pieces[1:]:
                self.union(pieces[0], p)
            new_root = self.find(pieces[0])
            new_root.has_producer = root.has_producer
            for reason in root.fixed:
                self._add_reason(new_root, reason)

    def split_at(self, layout: Layout, offsets: Iterable[int]) -> Layout:
        """Split spaces so that every offset (an axis index) falls on a unit boundary between
        segments. Returns the resolved layout, or ``None`` if an offset cuts through ``inner``."""
        for offset in sorted(set(offsets)):
            pos = 0
            for s, inner in self.resolve(layout):
                end = pos + s.size * inner
                if pos < offset < end:
                    if (offset - pos) % inner:
                        return None
                    self.split(s, (offset - pos) // inner)
                    break
                pos = end
        return self.resolve(layout)

    def _add_reason(self, root: Space, reason: Fix) -> None:
        if reason not in root.fixed and len(root.fixed) < MAX_REASONS:
            root.fixed.append(reason)

    def mark_producer(self, layout: Layout | None) -> None:
        """The spaces of ``layout`` hold a layer's output units (functional layers)."""
        for s, _ in self.resolve(layout or ()):
            s.producer = True
            self.find(s).has_producer = True

    def fix(self, layout: Layout | None, reason: Fix) -> None:
        """Forbid permuting every space in ``layout``."""
        for s, _ in self.resolve(layout or ()):
            self._add_reason(self.find(s), reason)

    def merge(self, a: Layout | None, b: Layout | None, reason: Fix) -> Layout | None:
        """Couple two layouts of one axis unit by unit; returns the merged (resolved) layout.

        A layout merged with ``None`` is fixed, and so is a pair whose structures disagree
        (different ``inner`` where units meet); ``reason`` says which op coupled them.
        """
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.fix(a if b is None else b, reason.because("coupled with an axis that is never permuted"))
            return None
        if layout_size(a) != layout_size(b):
            self.fix(a, reason.because("axis sizes differ"))
            self.fix(b, reason.because("axis sizes differ"))
            return None
        while True:
            ra, rb = self.resolve(a), self.resolve(b)
            cuts = _boundaries(ra) ^ _boundaries(rb)
            if not cuts:
                break
            if self.split_at(a, cuts) is None or self.split_at(b, cuts) is None:
                self.fix(a, reason.because("incompatible flattening"))
                self.fix(b, reason.because("incompatible flattening"))
                return None
        for (sa, ia), (sb, ib) in zip(ra, rb):
            if ia != ib:
                self.fix(a, reason.because("incompatible flattening"))
                self.fix(b, reason.because("incompatible flattening"))
                return None
            self.union(sa, sb)
        return ra


def _boundaries(layout: Layout) -> set[int]:
    out, pos = set(), 0
    for s, inner in layout:
        pos += s.size * inner
        out.add(pos)
    return out
