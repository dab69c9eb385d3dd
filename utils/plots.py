"""Training plots: batch mosaics with boxes (OpenCV) and results / labels / evolution figures (matplotlib).

Every function takes its input and output paths as arguments and writes one image file. matplotlib is
imported inside the functions and used without pyplot (a ``Figure`` on its own Agg canvas), so importing this
module touches no global state and plotting works on headless machines and in worker threads.

Colours are BGR tuples (OpenCV order) and depend only on the class index.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "class_color",
    "color_list",
    "plot_one_box",
    "place_labels",
    "plot_images",
    "plot_results",
    "plot_labels",
    "plot_evolution_results",
]

LOGGER = logging.getLogger(__name__)

RESULTS_COLUMNS: tuple[str, ...] = (
    "epoch", "gpu_mem", "box", "obj", "cls", "total", "targets", "img_size",
    "P", "R", "mAP@0.5", "mAP@0.5:0.95", "F1", "val_box", "val_obj", "val_cls",
)  # fmt: skip
"""Columns of the trainer's results.txt, used when a file has no header line."""

_ULTRALYTICS_RESULTS_COLUMNS: tuple[str, ...] = (
    "epoch", "gpu_mem", "GIoU", "obj", "cls", "total", "targets", "img_size",
    "P", "R", "mAP@0.5", "F1", "val_GIoU", "val_obj", "val_cls",
)  # fmt: skip
"""Columns of a headerless ultralytics/yolov3 (2019-2020) results.txt, so old runs can be plotted too."""

_NOT_PLOTTED = {"epoch", "gpu_mem", "targets", "img_size"}
_GOLDEN = 0.618033988749895


def class_color(i: int) -> tuple[int, int, int]:
    """A saturated BGR colour for class ``i``; hues follow the golden ratio so neighbours differ clearly."""
    r, g, b = colorsys.hsv_to_rgb((int(i) * _GOLDEN) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def color_list(n: int) -> list[tuple[int, int, int]]:
    """``class_color(i)`` for ``i`` in ``range(n)``."""
    return [class_color(i) for i in range(n)]


def plot_one_box(
    xyxy: Sequence[float],
    img: np.ndarray,
    color: tuple[int, int, int] | None = None,
    label: str | None = None,
    line_thickness: int | None = None,
) -> np.ndarray:
    """Draw one box (x1, y1, x2, y2 pixels) and an optional filled label on ``img`` (HxWx3 uint8) in place.

    ``color`` is in ``img``'s channel order (BGR for OpenCV images); ``line_thickness`` defaults to about
    0.2% of the image size. Returns ``img``.
    """
    h, w = img.shape[:2]
    tl = line_thickness or max(round(0.002 * (h + w) / 2) + 1, 1)
    color = tuple(int(c) for c in (color if color is not None else class_color(0)))
    c1 = (int(round(float(xyxy[0]))), int(round(float(xyxy[1]))))
    c2 = (int(round(float(xyxy[2]))), int(round(float(xyxy[3]))))
    cv2.rectangle(img, c1, c2, color, thickness=tl, lineType=cv2.LINE_AA)
    if label:
        tf = max(tl - 1, 1)
        font_scale = tl / 3
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, tf)
        # above the box when there is room, else just inside its top edge
        top = c1[1] - th - 3 if c1[1] - th - 3 >= 0 else c1[1] + th + 3
        lo, hi = min(top, c1[1]), max(top, c1[1])
        cv2.rectangle(img, (c1[0], lo), (c1[0] + tw, hi), color, -1, cv2.LINE_AA)
        cv2.putText(img, label, (c1[0], hi - 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), tf, cv2.LINE_AA)
    return img


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_NAME_SCALE, _NAME_Y = 0.45, 14  # font scale and baseline of the file names on plot_images tiles


def _label_size(label: str, font_scale: float, thickness: int) -> tuple[int, int]:
    """(w, h) in pixels of a filled label box for ``label`` (text plus a 3-pixel margin below and above)."""
    (tw, th), _ = cv2.getTextSize(label, _FONT, font_scale, thickness)
    return tw + 2, th + 4


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two ``x1, y1, x2, y2`` rectangles (end-exclusive pixels) share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    boxes: Sequence[Sequence[float]],
    sizes: Sequence[tuple[int, int]],
    width: int,
    height: int,
    reserved: Sequence[tuple[int, int, int, int]] = (),
) -> list[tuple[int, int, int, int] | None]:
    """Where to put each box's label so that no two labels, and no label and a reserved area, share a pixel.

    Labels are placed in order (put the most important first). Each tries, in turn: above the box's top-left
    corner, just inside it, below the box's bottom-left corner, just inside that, then further down and up the box's
    left edge in label-height steps; positions are kept inside the ``width`` x ``height`` image. A label that finds
    no free place gets None (its box is still drawn, unlabelled).

    Args:
        boxes: (n, 4) ``x1, y1, x2, y2`` pixels.
        sizes: (n,) label ``(w, h)`` pixels.
        reserved: ``x1, y1, x2, y2`` areas no label may cover (e.g. the file name).

    Returns:
        Per box the label's ``x1, y1, x2, y2`` (end-exclusive) or None.
    """
    taken = [tuple(int(v) for v in r) for r in reserved]
    out: list[tuple[int, int, int, int] | None] = []
    for box, (w, h) in zip(boxes, sizes):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        x = min(max(x1, 0), max(width - w, 0))
        starts = [y1 - h, y1, y2, y2 - h]
        starts += [y1 + k * h for k in range(1, max(height // max(h, 1), 1) + 1)]
        starts += [y1 - k * h for k in range(2, max(height // max(h, 1), 1) + 1)]
        spot = None
        for y in starts:
            rect = (x, y, x + w, y + h)
            if y < 0 or y + h > height or w > width:
                continue
            if not any(_overlaps(rect, t) for t in taken):
                spot = rect
                break
        if spot is not None:
            taken.append(spot)
        out.append(spot)
    return out


def _draw_label(img: np.ndarray, rect: tuple[int, int, int, int], label: str, color: tuple[int, int, int],
                font_scale: float, thickness: int) -> None:  # fmt: skip
    """A filled label box in ``color`` with white text, inside ``rect`` (end-exclusive ``x1, y1, x2, y2``)."""
    x1, y1, x2, y2 = rect
    cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, -1)
    cv2.putText(img, label, (x1 + 1, y2 - 3), _FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().float().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    return np.asarray(x)


def _as_uint8_images(images: Any) -> np.ndarray:
    """(bs, 3, h, w) uint8 from uint8 or float (0..1 or 0..255) input."""
    imgs = _to_numpy(images)
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"images must be (bs, 3, h, w), got shape {imgs.shape}")
    if imgs.dtype == np.uint8:
        return imgs
    imgs = imgs.astype(np.float32)
    if imgs.size and imgs.max() <= 1.0 + 1e-6:
        imgs = imgs * 255.0
    return np.clip(imgs + 0.5, 0, 255).astype(np.uint8)


def _draw_tile_boxes(
    tile: np.ndarray, rows: np.ndarray, names: Sequence[str] | None, scale: float,
    reserved: list[tuple[int, int, int, int]],
) -> None:
    """Draw one tile's boxes, then their labels where ``place_labels`` finds room (``reserved`` stays free).

    ``rows``: (n, 6) labels or (n, 7) detections of ``plot_images``, xywh normalised (largest value <= 1.01) or
    pixels of the input image (multiplied by ``scale``, the tile's shrink factor).
    """
    th, tw = tile.shape[:2]
    xywh = rows[:, 2:6].astype(np.float64)
    xywh *= [tw, th, tw, th] if xywh.max() <= 1.01 else scale
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    labels = []
    for row, box in zip(rows, xyxy):
        c = int(row[1])
        label = names[c] if names is not None and 0 <= c < len(names) else str(c)
        labels.append(f"{label} {row[6]:.2f}" if rows.shape[1] == 7 else label)
        plot_one_box(box, tile, color=class_color(c), line_thickness=1)  # every box first, labels on top
    # labels never cover one another or the file name: each takes a free place near its box, or none
    spots = place_labels(xyxy, [_label_size(x, 1 / 3, 1) for x in labels], tw, th, reserved)
    for row, label, spot in zip(rows, labels, spots):
        if spot is not None:
            _draw_label(tile, spot, label, class_color(int(row[1])), 1 / 3, 1)


def plot_images(
    images: Any,
    targets: Any = None,
    paths: Sequence[str] | None = None,
    fname: str | Path | None = "images.jpg",
    names: Sequence[str] | None = None,
    max_size: int = 640,
    max_subplots: int = 16,
) -> np.ndarray:
    """Draw a batch as a square grid of tiles with its boxes and file names, and write it to ``fname``.

    Args:
        images: (bs, 3, h, w) RGB, uint8 or float (0..1 or 0..255), torch tensor or ndarray.
        targets: (n, 6) ``[image, class, x, y, w, h]`` labels or (n, 7) detections with the confidence last
            (only confidences > 0.25 are drawn). Boxes are xywh, normalised 0..1 when an image's largest
            coordinate is <= 1.01, otherwise pixels of the (h, w) input. None or empty: no boxes.
        paths: file names written on the tiles (basename, at most 40 characters, top left).
        fname: output image (BGR via ``cv2.imwrite``); None writes nothing.
        names: class names for labels (class indices when absent or out of range).
        max_size: tiles are shrunk so their longer side is at most this many pixels.
        max_subplots: at most this many images are drawn.

    Every box is drawn, then the labels (detections by decreasing confidence) each in a free place near its box
    (``place_labels``): labels never cover one another or the file name; a label with no free place is left out.

    Returns:
        The mosaic, (H, W, 3) uint8 RGB (ready for TensorBoard's ``add_image(..., dataformats='HWC')``).
    """
    imgs = _as_uint8_images(images)
    bs, _, h, w = imgs.shape
    bs = min(bs, max_subplots)
    ns = max(math.ceil(math.sqrt(bs)), 1)
    scale = min(1.0, max_size / max(h, w))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    mosaic = np.full((ns * th, ns * tw, 3), 255, dtype=np.uint8)
    tl = 2 if max(th, tw) < 400 else 3
    t = _to_numpy(targets) if targets is not None else np.zeros((0, 6))
    t = t.reshape(-1, t.shape[-1]) if t.size else np.zeros((0, 6))
    if t.shape[1] not in (6, 7):
        raise ValueError(f"targets must have 6 or 7 columns, got shape {t.shape}")

    for i in range(bs):
        tile = np.ascontiguousarray(imgs[i].transpose(1, 2, 0)[:, :, ::-1])  # RGB -> BGR for OpenCV
        if scale < 1:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        rows = t[t[:, 0] == i]
        if t.shape[1] == 7:
            rows = rows[rows[:, 6] > 0.25]
            rows = rows[np.argsort(-rows[:, 6], kind="stable")]  # the most confident get their labels placed first
        reserved = []
        name = Path(str(paths[i])).name[:40] if paths is not None and i < len(paths) else None
        if name:
            (nw, nh), base = cv2.getTextSize(name, _FONT, _NAME_SCALE, 3)
            reserved.append((0, 0, 4 + nw + 2, _NAME_Y + base + 2))  # the name's text and its dark outline
        if len(rows):
            _draw_tile_boxes(tile, rows, names, scale, reserved)
        if name:
            cv2.putText(tile, name, (4, _NAME_Y), _FONT, _NAME_SCALE, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, name, (4, _NAME_Y), _FONT, _NAME_SCALE, (230, 230, 230), 1, cv2.LINE_AA)
        cv2.rectangle(tile, (0, 0), (tw - 1, th - 1), (255, 255, 255), tl)
        x0, y0 = (i % ns) * tw, (i // ns) * th
        mosaic[y0 : y0 + th, x0 : x0 + tw] = tile  # drawn per tile so labels never spill into a neighbour

    if fname is not None:
        fname = Path(fname)
        fname.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(fname), mosaic):
            raise OSError(f"could not write {fname} (unsupported extension or unwritable folder)")
    return np.ascontiguousarray(mosaic[:, :, ::-1])


def _figure(n_panels: int, ncols: int, panel_size: tuple[float, float]) -> tuple[Any, list[Any]]:
    """A pyplot-free matplotlib Figure on an Agg canvas with ``n_panels`` axes in a grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(min(ncols, n_panels), 1)
    nrows = max(math.ceil(n_panels / ncols), 1)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="tight")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def _save(fig: Any, save_path: str | Path, dpi: int = 120) -> Path:
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_path, dpi=dpi)
    return save_path


def _parse_cell(cell: str) -> float:
    """A results.txt cell as a number: '3/99' -> 3, '1.23G' -> 1.23, anything else unparsable -> nan."""
    cell = cell.split("/", 1)[0].rstrip("GMKB")
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def _read_results(path: Path) -> tuple[list[str], np.ndarray]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return [], np.zeros((0, 0))
    first = lines[0].lstrip("#").split()
    if all(math.isnan(_parse_cell(c)) for c in first):
        columns, body = first, lines[1:]
    else:  # no header line: the trainer's or ultralytics' fixed layout
        layouts = {len(c): list(c) for c in (RESULTS_COLUMNS, _ULTRALYTICS_RESULTS_COLUMNS)}
        columns, body = layouts.get(len(first), [f"col{i}" for i in range(len(first))]), lines
    rows = []
    for line_no, line in enumerate(body, len(lines) - len(body) + 1):
        cells = line.split()
        if len(cells) != len(columns):
            LOGGER.warning("%s:%d: %d values for %d columns, row skipped", path, line_no, len(cells), len(columns))
            continue
        rows.append([_parse_cell(c) for c in cells])
    return columns, np.array(rows, dtype=np.float64).reshape(-1, len(columns))


def plot_results(results_file: str | Path, save_path: str | Path = "results.png") -> Path | None:
    """Plot every loss and metric column of a results.txt against the epoch and write ``save_path``.

    Columns are found by the header line's names (``RESULTS_COLUMNS`` in the trainer's file); epoch,
    gpu_mem, targets and img_size are not plotted. A headerless file with the trainer's 16 or ultralytics'
    15 columns is read with those layouts. A missing or empty file logs a warning and returns None.
    """
    results_file = Path(results_file)
    if not results_file.is_file():
        LOGGER.warning("%s not found: no results plot", results_file)
        return None
    columns, table = _read_results(results_file)
    if not columns:
        LOGGER.warning("%s is empty: no results plot", results_file)
        return None
    x = table[:, columns.index("epoch")] if "epoch" in columns else np.arange(len(table), dtype=np.float64)
    plotted = [(j, c) for j, c in enumerate(columns) if c not in _NOT_PLOTTED]
    fig, axes = _figure(len(plotted), ncols=5, panel_size=(3.0, 2.5))
    for ax, (j, name) in zip(axes, plotted):
        ax.plot(x, table[:, j], marker=".", linewidth=1.5, markersize=5)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _save(fig, save_path)


def plot_labels(labels: Any, names: Sequence[str] | None, save_path: str | Path = "labels.png") -> Path:
    """Histogram of classes and scatter plots of box centres and sizes of a dataset's labels.

    Args:
        labels: (n, 5) ``class, x, y, w, h`` with xywh normalised 0..1 (all images' labels stacked).
        names: class names (sets the number of histogram bins and the tick labels when <= 30 classes).
    """
    lab = _to_numpy(labels).astype(np.float64).reshape(-1, 5)
    cls = lab[:, 0].astype(np.int64)
    nc = len(names) if names else (int(cls.max()) + 1 if len(cls) else 1)
    counts = np.bincount(cls[(cls >= 0) & (cls < nc)], minlength=nc)
    fig, (ax_cls, ax_xy, ax_wh) = _figure(3, ncols=3, panel_size=(4.0, 3.6))
    ax_cls.bar(np.arange(nc), counts, color=[tuple(c / 255 for c in class_color(i)[::-1]) for i in range(nc)])
    ax_cls.set_xlabel("class")
    ax_cls.set_ylabel("instances")
    ax_cls.set_title(f"{len(lab)} labels, {nc} classes")
    if names and nc <= 30:
        ax_cls.set_xticks(np.arange(nc), [str(n) for n in names], rotation=90, fontsize=7)
    marker = float(np.clip(200 / math.sqrt(max(len(lab), 1)), 1, 20))  # point area shrinks for big sets
    for ax, (a, b), title in ((ax_xy, (1, 2), ("x", "y")), (ax_wh, (3, 4), ("width", "height"))):
        ax.scatter(lab[:, a], lab[:, b], s=marker, alpha=0.5, c="tab:blue", linewidths=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(title[0])
        ax.set_ylabel(title[1])
        ax.set_title(f"box {title[0][0]}{title[1][0]} (normalised)")
    ax_xy.invert_yaxis()  # image coordinates: y grows downwards
    return _save(fig, save_path)


def plot_evolution_results(
    evolve_file: str | Path,
    save_path: str | Path = "evolve.png",
    fitness_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """Scatter each hyperparameter of evolve.txt against fitness, marking the fittest row; write ``save_path``.

    ``fitness_fn`` maps (n, 8) results to (n,) fitness; default ``utils.metrics.fitness``.
    """
    from matplotlib.ticker import MaxNLocator

    from utils.evolve import read_evolve

    if fitness_fn is None:
        from utils.metrics import fitness as fitness_fn
    results, hyps, keys = read_evolve(evolve_file)
    if len(results) == 0:
        raise ValueError(f"{evolve_file}: no generations to plot")
    fit = np.asarray(fitness_fn(results), dtype=np.float64).reshape(-1)
    best = int(np.argmax(fit))
    fig, axes = _figure(len(keys), ncols=5, panel_size=(2.8, 2.4))
    for ax, j, key in zip(axes, range(len(keys)), keys):
        ax.scatter(hyps[:, j], fit, c=fit, cmap="viridis", s=12, alpha=0.8, linewidths=0)
        ax.plot(hyps[best, j], fit[best], "k+", markersize=14, markeredgewidth=2)
        ax.set_title(f"{key} = {hyps[best, j]:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    if axes:
        axes[0].set_ylabel("fitness")
    return _save(fig, save_path)
