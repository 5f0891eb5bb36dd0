"""PNG pictures of a run, drawn with Pillow (no plotting library needed): the history of
evaluation metrics, and grids of frames. Written atomically."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from world_model.checkpoint import write_files_atomically

__all__ = ["plot_curves", "plot_history", "save_png", "video_grid"]

PANEL = (480, 260)
"""Width and height of one metric's panel in pixels."""
MARGIN = (56, 28, 16, 34)
"""Left, top, right, bottom margins of the plot area inside a panel."""
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def save_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_files_atomically(path.parent, {path.name: buffer.getvalue()})


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _panel(xs: Sequence[float], series: dict[str, Sequence[float | None]], title: str, xlabel: str,
           colours: Sequence[tuple[int, int, int]] = COLOURS, size: tuple[int, int] = PANEL) -> Image.Image:
    """One plot: every series of ``series`` (name -> ys over ``xs``) on shared axes."""
    W, H = size
    left, top, right, bottom = MARGIN
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 6), title, fill="black")
    x0, x1, y0, y1 = left, W - right, top, H - bottom
    d.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    lines = {name: [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)] for name, ys in series.items()}
    pts = [p for line in lines.values() for p in line]
    if not pts:
        d.text((x0 + 8, y0 + 8), "no data", fill="gray")
        return img
    px, py = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    xmin, xmax = float(px.min()), float(px.max())
    ymin, ymax = float(py.min()), float(py.max())
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    pad = 0.05 * (ymax - ymin)
    ymin, ymax = ymin - pad, ymax + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)

    for k in range(5):  # grid lines and tick labels
        yv = ymin + (ymax - ymin) * k / 4
        _, yp = to_px(xmin, yv)
        d.line([x0, yp, x1, yp], fill=(230, 230, 230))
        d.text((4, yp - 6), _fmt(yv), fill="black")
        xv = xmin + (xmax - xmin) * k / 4
        xp, _ = to_px(xv, ymin)
        d.text((xp - 12, y1 + 4), _fmt(xv), fill="black")
    d.text(((x0 + x1) / 2 - 12, H - 14), xlabel, fill="black")
    for i, (name, line) in enumerate(lines.items()):
        colour = colours[i % len(colours)]
        xy = [to_px(x, y) for x, y in line]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for xp, yp in xy:
            d.ellipse([xp - 2, yp - 2, xp + 2, yp + 2], fill=colour)
        label = f"{name} (last {_fmt(line[-1][1])})" if len(series) > 1 and line else f"last {_fmt(line[-1][1])}" if line else name
        d.text((x1 - 200 if len(series) > 1 else x1 - 90, y0 + 4 + 12 * i), label, fill=colour)
    return img


def plot_curves(xs: Sequence[float], series: dict[str, Sequence[float | None]], title: str, xlabel: str,
                path: Path) -> None:
    """Several named curves on one plot (e.g. PSNR against seconds for a model and its baselines)."""
    save_png(_panel(xs, series, title, xlabel, size=(PANEL[0] + 160, PANEL[1] + 60)), path)


def plot_history(history: Sequence[dict[str, float]], keys: Sequence[str], path: Path, x: str = "step") -> None:
    """One panel per metric in ``keys`` against ``x`` (stacked vertically) into ``path``."""
    keys = list(keys)
    if not keys:
        return
    out = Image.new("RGB", (PANEL[0], PANEL[1] * len(keys)), "white")
    xs = [h.get(x, i) for i, h in enumerate(history)]
    for i, key in enumerate(keys):
        panel = _panel(xs, {key: [h.get(key) for h in history]}, key, x, [COLOURS[i % len(COLOURS)]])
        out.paste(panel, (0, PANEL[1] * i))
    save_png(out, path)


def video_grid(rows: Sequence[np.ndarray], gap: int = 2) -> Image.Image:
    """Rows of frames ``(T, H, W, 3)`` uint8 -> one image, frames side by side, rows stacked."""
    T, H, W, _ = rows[0].shape
    out = np.full((len(rows) * (H + gap) - gap, T * (W + gap) - gap, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for t in range(T):
            out[r * (H + gap): r * (H + gap) + H, t * (W + gap): t * (W + gap) + W] = frames[t]
    return Image.fromarray(out)
