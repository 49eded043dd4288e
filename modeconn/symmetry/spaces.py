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

Attention heads: reshaping an axis of ``H·d`` units into ``(H, d)`` gives each head its own
units (a :class:`Fold`: the ``d`` axis follows a different layout for each index of the ``H``
axis) and the ``H`` axis a *head space*, whose permutation moves whole heads. A rule that does
not read folds sees the tensor *collapsed*: every head's units merged into one layout of the
``d`` axis (one permutation shared by all heads), which is always sound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from modeconn.errors import SymmetryError
from modeconn.symmetry.spec import Fix

__all__ = ["Space", "SpaceGraph", "Segment", "Layout", "Fold", "TensorLayout", "layout_size"]

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
    has_heads: bool = False  # on roots: some member is a head space
    shifted: Fix | None = None  # on roots: an op that coupled two pieces of one space at different offsets
    split_from: Space | None = None  # the space this one is a piece of
    blocks: list[tuple[Layout, ...]] = field(default_factory=list)  # head spaces: each head's units
    uid: int = 0

    def __repr__(self) -> str:
        return f"Space#{self.uid}({self.label}[{self.start}:{self.start + self.size}])"


Segment = tuple[Space, int]
Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class Fold:
    """Axis ``dims`` of a tensor holds each head's units, a different layout for each index
    along axis ``heads``: index ``(h, d)`` is index ``h · size(dims) + d`` of ``flat``. With
    an ``outer`` axis (a fused q/k/v projection cut into ``(3, H, d)``), index ``(o, h, d)``
    is index ``(o · H + h) · size(dims) + d``. With ``repeat = r`` each head stands ``r``
    times in a row along the heads axis (grouped-query attention's key/value heads repeated
    for the query heads that share them): index ``(h, d)`` is index ``(h // r) · size(dims) + d``."""

    heads: int
    dims: int
    flat: Layout
    outer: int | None = None
    repeat: int = 1

    def moved(self, order: Sequence[int]) -> Fold:
        """The fold after the axes are reordered (new axis ``i`` is old axis ``order[i]``)."""
        order = list(order)
        outer = None if self.outer is None else order.index(self.outer)
        return Fold(order.index(self.heads), order.index(self.dims), self.flat, outer, self.repeat)

    def shifted(self, axes: Callable[[int], int]) -> Fold:
        """The fold with each axis index mapped by ``axes`` (an axis inserted or removed elsewhere)."""
        outer = None if self.outer is None else axes(self.outer)
        return Fold(axes(self.heads), axes(self.dims), self.flat, outer, self.repeat)


class TensorLayout:
    """The shape of one tensor in the graph and the layout of each of its axes.

    ``uniform`` marks a tensor whose elements are all equal (``zeros_like``, ``new_zeros``):
    no permutation changes it, so it couples nothing it meets. ``fold`` holds per-head units
    (see the module docstring); the layout of its ``dims`` axis is then ``None``.
    """

    __slots__ = ("shape", "layouts", "uniform", "fold")

    def __init__(
        self,
        shape: Sequence[int],
        layouts: Sequence[Layout | None] | None = None,
        uniform: bool = False,
        fold: Fold | None = None,
    ):
        self.shape = tuple(shape)
        layouts = tuple(layouts) if layouts is not None else (None,) * len(self.shape)
        if len(layouts) != len(self.shape):
            raise SymmetryError(f"{len(layouts)} axis layouts given for a tensor of shape {self.shape}")
        # size-1 axes carry no permutation (broadcast, keepdim reductions)
        self.layouts = tuple(None if n == 1 else lay for n, lay in zip(self.shape, layouts))
        self.uniform = uniform
        self.fold = fold

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
        extra = (
            (", uniform" if self.uniform else "")
            + (f", heads {self.fold.heads} x dims {self.fold.dims}" if self.fold else "")
            + (f" (each head {self.fold.repeat} times)" if self.fold and self.fold.repeat > 1 else "")
        )
        return f"TensorLayout({self.shape}, {spaces}{extra})"


def layout_size(layout: Layout) -> int:
    return sum(s.size * inner for s, inner in layout)


class SpaceGraph:
    """Creates, merges, splits and fixes spaces."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.fixed_layouts: list[Layout] = []  # every layout fixed: a head group checks them
        self.fences: list[tuple[Layout, tuple[int, ...]]] = []  # (layout, offsets) rules split at
        # grouped-query attention: (query heads, key/value heads, query heads per key/value head)
        self.shared_kv: list[tuple[Layout, Layout, int]] = []

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
        ra.has_heads = ra.has_heads or rb.has_heads
        ra.shifted = ra.shifted or rb.shifted
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
            # a piece of a head space is a head space of the same heads' blocks: each unit
            # still stands for a whole block of other units, wherever it is bound
            head.blocks = [b[:offset] for b in m.blocks]
            tail.blocks = [b[offset:] for b in m.blocks]
            m.children = (head, tail)
            heads.append(head)
            tails.append(tail)
        for pieces in (heads, tails):
            for p in pieces[1:]:
                self.union(pieces[0], p)
            new_root = self.find(pieces[0])
            new_root.has_producer = root.has_producer
            new_root.has_heads = root.has_heads
            new_root.shifted = new_root.shifted or root.shifted
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
        if layout:
            self.fixed_layouts.append(layout)
        for s, _ in self.resolve(layout or ()):
            self._add_reason(self.find(s), reason)

    def heads(self, flat: Layout, n_heads: int) -> list[Layout] | None:
        """``flat`` cut into ``n_heads`` equal layouts (spaces split at the head boundaries), or
        ``None`` when a boundary cuts through a flattened unit."""
        size = layout_size(flat) // n_heads
        pieces = self.split_at(flat, range(size, layout_size(flat), size))
        if pieces is None:
            return None
        out: list[list[Segment]] = [[] for _ in range(n_heads)]
        pos = 0
        for s, inner in pieces:
            out[pos // size].append((s, inner))
            pos += s.size * inner
        return [tuple(h) for h in out]

    def unfolded(self, fold: Fold, n_heads: int) -> Layout | None:
        """The layout of a fold's heads axis (of ``n_heads`` indices) and units axis flattened
        into one, heads major: its ``flat``, each head repeated ``fold.repeat`` times; ``None``
        when ``flat`` cannot be cut into heads."""
        if fold.repeat == 1:
            return fold.flat
        heads = self.heads(fold.flat, n_heads // fold.repeat)
        if heads is None:
            return None
        return tuple(seg for head in heads for _ in range(fold.repeat) for seg in head)

    def new_heads(self, blocks: Sequence[Layout], label: str) -> Space:
        """A head space: unit ``h`` is the block of units ``blocks[h]``, moved as a whole."""
        s = self.new(len(blocks), label, producer=False)
        s.blocks.append(tuple(blocks))
        s.has_heads = True
        return s

    def collapse(self, t: TensorLayout, reason: Fix) -> TensorLayout:
        """``t`` with its fold (if any) collapsed: every head's units merged into one layout of
        the ``dims`` axis."""
        if t.fold is None:
            return t
        n = t.shape[t.fold.heads] // t.fold.repeat
        n *= t.shape[t.fold.outer] if t.fold.outer is not None else 1
        heads = self.heads(t.fold.flat, n)
        if heads is None:
            self.fix(t.fold.flat, reason.because("incompatible flattening"))
            merged = None
        else:
            merged = heads[0]
            for h in heads[1:]:
                merged = self.merge(merged, h, reason)
        layouts = list(t.layouts)
        layouts[t.fold.dims] = merged
        return TensorLayout(t.shape, layouts, t.uniform)

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
            if _origin(sa) is _origin(sb) and sa.start != sb.start:
                self.find(sa).shifted = self.find(sa).shifted or reason
            self.union(sa, sb)
        return ra


def _origin(s: Space) -> Space:
    """The space ``s`` is a piece of, before any split."""
    while s.split_from is not None:
        s = s.split_from
    return s


def _boundaries(layout: Layout) -> set[int]:
    out, pos = set(), 0
    for s, inner in layout:
        pos += s.size * inner
        out.add(pos)
    return out
