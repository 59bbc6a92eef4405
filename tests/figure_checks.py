"""Readability checks for matplotlib figures: no two drawn texts overlap, and every axis
that shows tick labels has a label saying what they count."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

# Two texts whose boxes share less than this (pixels, each way) touch, not overlap.
TOLERANCE_PX = 1.0


def _drawn_texts(fig) -> tuple[list[Text], object]:
    """The non-empty texts drawn on the canvas, and its renderer. Recorded while drawing, so
    tick labels the axis skips (outside its view) and hidden texts are left out."""
    drawn: list[Text] = []
    original = Text.draw

    def record(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    canvas = FigureCanvasAgg(fig)
    Text.draw = record  # type: ignore[method-assign]
    try:
        canvas.draw()
    finally:
        Text.draw = original  # type: ignore[method-assign]
    return drawn, canvas.get_renderer()


def figure_problems(fig) -> list[str]:
    """What makes ``fig`` hard to read: overlapping texts and axes whose tick labels have
    no axis label. Empty when it is fine."""
    texts, renderer = _drawn_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    problems = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = boxes[i], boxes[j]
            dx = min(a.x1, b.x1) - max(a.x0, b.x0)
            dy = min(a.y1, b.y1) - max(a.y0, b.y0)
            if dx > TOLERANCE_PX and dy > TOLERANCE_PX:
                problems.append(
                    f"texts overlap: {texts[i].get_text()!r} and {texts[j].get_text()!r}"
                )
    drawn = {id(t) for t in texts}
    for n, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        for name, axis, label in (
            ("x", ax.xaxis, ax.get_xlabel()),
            ("y", ax.yaxis, ax.get_ylabel()),
        ):
            ticks = [t for t in axis.get_ticklabels(which="both") if id(t) in drawn]
            if ticks and not label.strip():
                problems.append(
                    f"axes {n} ({ax.get_title() or 'untitled'}): the {name} axis shows tick "
                    f"labels ({', '.join(t.get_text() for t in ticks[:3])}, ...) but no label"
                )
    return problems
