"""Figures and the one-page HTML report of ``castvit demo``.

:func:`write_figures` (from the demo's metrics, the content of ``metrics.json``, and its
predictions, the arrays of ``predictions.npz``) and then :func:`write_html` write into the
report folder:

* ``examples_K.png``: test image ``K`` with its ground truth and superpixels, then one
  row per method with its levels 1..4 (segments in distinct colours over the image,
  boundaries in white);
* ``levels.png``: each headline metric per level and method, object and part GT;
* ``training_curve.png``: loss and accuracy per epoch;
* ``index.html``: everything above in one self-contained page (figures embedded as
  data URIs and linked to their files; no script, no external resource).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from castvit.ops import label_boundaries

METHOD_LABELS = {"trained": "trained CAST", "untrained": "untrained CAST", "colour_grouping": "colour grouping",
                 "superpixels": "superpixels"}
METHOD_COLOURS = {"trained": "#d62728", "untrained": "#7f7f7f", "colour_grouping": "#1f77b4",
                  "superpixels": "#2ca02c"}
METRICS = (("boundary_f", "boundary F"), ("covering", "covering"), ("miou", "majority-label mIoU"),
           ("vi", "VI (lower is better)"))


def segment_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``H×W×3`` uint8: each segment of ``labels`` in its own colour blended over
    ``image``, with segment boundaries in white. Segments that share a colour are
    still told apart by the boundaries."""
    ids, inverse = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng(len(ids))
    palette = _palette(len(ids), rng)
    colour = palette[inverse.reshape(labels.shape)]
    out = ((1 - alpha) * image.astype(np.float32) + alpha * colour).astype(np.uint8)
    out[label_boundaries(labels)] = 255
    return out


def _palette(n: int, rng: np.random.Generator) -> np.ndarray:
    import matplotlib

    base = np.asarray(matplotlib.colormaps["tab20"].colors) * 255
    base = np.concatenate([base[::2], base[1::2]])  # strong colours first
    if n > len(base):
        base = np.concatenate([base, rng.uniform(0, 255, size=(n - len(base), 3))])
    return base[:n].astype(np.float32)


def plot_example(predictions: dict[str, np.ndarray], index: int, num_clusters: list[int], class_names: list[str],
                 path: Path) -> None:
    """The figure of one test image: image, GT, superpixels, and each method's levels."""
    import matplotlib.pyplot as plt

    image = predictions["image"][index]
    methods = [m for m in ("trained", "untrained", "colour_grouping") if f"levels_{m}" in predictions]
    num_levels = predictions["levels_trained"].shape[1] - 1
    cols = max(num_levels, 4)
    fig, axes = plt.subplots(1 + len(methods), cols, figsize=(1.9 * cols, 2.0 * (1 + len(methods))), squeeze=False)
    label = int(predictions["label"][index])
    top = [
        (image, f"image: {class_names[label]}"),
        (segment_overlay(image, predictions["object_mask"][index]), "object GT"),
        (segment_overlay(image, predictions["part_mask"][index]), "part GT"),
        (segment_overlay(image, predictions["superpixels"][index]),
         f"superpixels ({np.unique(predictions['superpixels'][index]).size})"),
    ]
    for ax, (picture, title) in zip(axes[0], top):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    for row, m in enumerate(methods, start=1):
        levels = predictions[f"levels_{m}"][index]
        for lvl in range(1, num_levels + 1):
            ax = axes[row, lvl - 1]
            ax.imshow(segment_overlay(image, levels[lvl]), interpolation="nearest")
            title = f"level {lvl}: {np.unique(levels[lvl]).size}/{num_clusters[lvl - 1]} segs"
            if lvl == 1:
                pred = predictions.get(f"pred_label_{m}")
                said = f" (says {class_names[int(pred[index])]})" if pred is not None else ""
                title = f"{METHOD_LABELS[m]}{said}\n{title}"
            ax.set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_levels(metrics: dict[str, Any], path: Path) -> None:
    """Headline metrics per level: one panel per (GT, metric), one line per method;
    the superpixels alone are a dashed horizontal line."""
    import matplotlib.pyplot as plt

    seg = metrics["segmentation"]
    gts = ("object", "parts")
    fig, axes = plt.subplots(len(gts), len(METRICS), figsize=(3.3 * len(METRICS), 2.9 * len(gts)), squeeze=False)
    clusters = metrics["config"]["num_clusters"]
    for r, g in enumerate(gts):
        for c, (key, title) in enumerate(METRICS):
            ax = axes[r, c]
            for m in ("trained", "untrained", "colour_grouping"):
                recs = [rec for rec in seg[m]["levels"] if rec["level"] > 0]
                ax.plot([rec["level"] for rec in recs], [rec[g][key] for rec in recs], "o-",
                        color=METHOD_COLOURS[m], label=METHOD_LABELS[m])
            sp = seg["superpixels"]["levels"][0]
            ax.axhline(sp[g][key], ls="--", color=METHOD_COLOURS["superpixels"],
                       label=f"superpixels ({sp['num_segments']:.0f})")
            ax.set_xticks(range(1, len(clusters) + 1))
            ax.set_xticklabels([f"{i + 1}\n({k})" for i, k in enumerate(clusters)], fontsize=8)
            ax.set_title(f"{g} GT: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if r == len(gts) - 1:
                ax.set_xlabel("level (segments)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curve(history: dict[str, list], chance: float, path: Path) -> None:
    """Training loss, and training / test accuracy, per epoch."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 3))
    epochs = [int(e) + 1 for e in history.get("epoch", [])]
    if epochs:
        ax_loss.plot(epochs, history["train_loss"], "o-", label="train loss")
        if any(v is not None for v in history.get("val_loss", [])):
            pts = [(e, v) for e, v in zip(epochs, history["val_loss"]) if v is not None]
            ax_loss.plot(*zip(*pts), "s-", label="test loss")
        ax_acc.plot(epochs, history["train_acc"], "o-", label="train accuracy")
        if any(v is not None for v in history.get("val_acc", [])):
            pts = [(e, v) for e, v in zip(epochs, history["val_acc"]) if v is not None]
            ax_acc.plot(*zip(*pts), "s-", label="test accuracy")
    ax_acc.axhline(chance, ls="--", color="grey", label="chance")
    ax_acc.set_ylim(0, 1)
    from matplotlib.ticker import MaxNLocator

    for ax, title in ((ax_loss, "cross-entropy"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def example_indices(labels: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` test images, one per class first (lowest index of each)."""
    chosen: list[int] = []
    for c in np.unique(labels):
        if len(chosen) < count:
            chosen.append(int(np.flatnonzero(labels == c)[0]))
    for i in range(len(labels)):
        if len(chosen) >= count:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def write_figures(out_dir: str | Path, metrics: dict[str, Any], predictions: dict[str, np.ndarray]
                  ) -> tuple[list[str], list[int]]:
    """Write the PNG figures; return their names (relative to ``out_dir``) and the
    indices of the example test images."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    out = Path(out_dir)
    cfg = metrics["config"]
    files: list[str] = []
    examples = example_indices(predictions["label"], cfg["num_examples"])
    for i in examples:
        name = f"examples_{i}.png"
        plot_example(predictions, i, list(cfg["num_clusters"]), metrics["data"]["class_names"], out / name)
        files.append(name)
    plot_levels(metrics, out / "levels.png")
    plot_training_curve(metrics.get("history", {}), metrics["classification"]["chance"], out / "training_curve.png")
    return files + ["levels.png", "training_curve.png"], examples


def write_html(out_dir: str | Path, metrics: dict[str, Any], examples: list[int]) -> str:
    """Write ``index.html`` (the figures must exist); return its name."""
    out = Path(out_dir)
    (out / "index.html").write_text(render_html(metrics, out, examples), encoding="utf-8")
    return "index.html"


# ------------------------------------------------------------------------------ HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
.verdict { padding: 0.8em 1em; border-radius: 6px; font-weight: 600; }
.good { background: #e3f5e1; border: 1px solid #7bbf72; } .bad { background: #fdecea; border: 1px solid #e08a80; }
.mixed { background: #fff6db; border: 1px solid #e0c060; }
.win { background: #e3f5e1; } .loss { background: #fdecea; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #555; } code, pre { font-size: 0.85em; background: #f6f6f6; }
pre { padding: 0.6em; overflow-x: auto; }
"""


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else _esc(v)


def _figure(out: Path, name: str, caption: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode("ascii")
    return (f'<figure><a href="{_esc(name)}"><img src="data:image/png;base64,{data}" alt="{_esc(name)}"></a>'
            f'<figcaption>{_esc(caption)} (<a href="{_esc(name)}">{_esc(name)}</a>)</figcaption></figure>')


def _segmentation_table(metrics: dict[str, Any]) -> str:
    seg = metrics["segmentation"]
    keys = [("boundary_precision", "bP"), ("boundary_recall", "bR"), ("boundary_f", "bF"), ("covering", "cov"),
            ("miou", "mIoU"), ("vi", "VI"), ("pri", "PRI")]
    head = "".join(f"<th>{_esc(s)}</th>" for _, s in keys)
    rows = [f"<tr><th rowspan=2>method</th><th rowspan=2>level</th><th rowspan=2>segments</th>"
            f"<th colspan={len(keys)}>object GT</th><th colspan={len(keys)}>part GT</th></tr>",
            f"<tr>{head}{head}</tr>"]
    for m in ("superpixels", "trained", "untrained", "colour_grouping"):
        for rec in seg[m]["levels"]:
            if m != "superpixels" and rec["level"] == 0:
                continue
            cells = "".join(f"<td>{rec[g][k]:.3f}</td>" for g in ("object", "parts") for k, _ in keys)
            rows.append(f'<tr><td class="name">{_esc(METHOD_LABELS[m])}</td><td>{rec["level"]}</td>'
                        f'<td>{rec["num_segments"]:.1f}</td>{cells}</tr>')
    return "<table>" + "".join(rows) + "</table>"


def _ods_table(metrics: dict[str, Any]) -> str:
    seg = metrics["segmentation"]
    rows = ["<tr><th>method</th><th>object ODS F (level)</th><th>object OIS F</th><th>part ODS F (level)</th>"
            "<th>part OIS F</th><th>hierarchy consistency</th></tr>"]
    for m in ("trained", "untrained", "colour_grouping", "superpixels"):
        oo = seg[m]["ods_ois"]
        cells = "".join(f'<td>{oo[g]["ods_f"]:.3f} ({oo[g]["ods_level"]})</td><td>{oo[g]["ois_f"]:.3f}</td>'
                        for g in ("object", "parts"))
        rows.append(f'<tr><td class="name">{_esc(METHOD_LABELS[m])}</td>{cells}'
                    f'<td>{seg[m]["hierarchy_consistency"]:.3f}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def _comparison_table(metrics: dict[str, Any]) -> str:
    comp = metrics["comparison"]
    parts = []
    for base, rows in comp["pairs"].items():
        c = comp["counts"][base]
        body = ["<tr><th>GT</th><th>metric</th><th>level</th><th>trained</th><th>baseline</th>"
                "<th>gain</th><th>95% interval</th><th>outcome</th></tr>"]
        for r in rows:
            level = r["level"] if r["baseline_level"] == r["level"] else f'{r["level"]} vs {r["baseline_level"]}'
            body.append(f'<tr class="{_esc(r["outcome"])}"><td class="name">{_esc(r["gt"])}</td>'
                        f'<td class="name">{_esc(r["metric"])}</td><td>{_esc(level)}</td><td>{r["trained"]:.3f}</td>'
                        f'<td>{r["baseline"]:.3f}</td><td>{r["diff"]:+.3f}</td>'
                        f'<td>[{r["low"]:+.3f}, {r["high"]:+.3f}]</td><td>{_esc(r["outcome"])}</td></tr>')
        parts.append(f"<details><summary>trained vs {_esc(METHOD_LABELS[base])}: {c['win']} wins, "
                     f"{c['loss']} losses, {c['tie']} ties</summary><table>{''.join(body)}</table></details>")
    return "".join(parts)


def render_html(metrics: dict[str, Any], out: Path, examples: list[int]) -> str:
    """The report page (figures read from ``out`` and embedded)."""
    cfg, cls, data = metrics["config"], metrics["classification"], metrics["data"]
    beats = metrics["comparison"]["beats"]
    mood = "good" if all(beats.values()) else "bad" if not any(beats.values()) else "mixed"
    timing = metrics.get("timing", {})
    timing_text = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timing.items())
    example_figs = "".join(_figure(out, f"examples_{i}.png",
                                   f"test image {i}: ground truth, superpixels, and each method's levels")
                           for i in examples)
    config_text = json.dumps(cfg, indent=None)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>castvit demo report</title><style>{_CSS}</style></head>
<body>
<h1>castvit demo: a segmentation hierarchy learned by classification alone</h1>
<p>A small CAST was trained to classify {data['num_train']} synthetic scenes ({cfg['image_size']}×{cfg['image_size']} px,
{cfg['num_classes']} classes: {_esc(', '.join(data['class_names']))}) for {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}. It never saw a mask.
Its graph pooling groups the {data['superpixels_per_image']:.1f} superpixels per image
({data['superpixels_with_token']:.1f} of them own a token) into levels of {_esc(', '.join(map(str, cfg['num_clusters'])))}
segments. Each level is scored on {data['num_test']} test scenes against the object mask and the part mask, next to the same
model untrained, the superpixels alone, and a non-learned colour grouping of the same superpixels (Ward clustering of
adjacent superpixels on mean CIELAB colour, cut at the same segment counts).</p>
<p class="verdict {mood}">{_esc(metrics['verdict'])}</p>

<h2>Classification</h2>
<table><tr><th>model</th><th>test accuracy</th></tr>
<tr><td class="name">trained CAST</td><td>{cls['trained']['acc']:.3f}</td></tr>
<tr><td class="name">untrained CAST</td><td>{cls['untrained']['acc']:.3f}</td></tr>
<tr><td class="name">chance</td><td>{cls['chance']:.3f}</td></tr></table>
{_figure(out, 'training_curve.png', 'training loss and accuracy per epoch (the test accuracy is reported, never used for selection)')}

<h2>Segmentation per level</h2>
<p>bP/bR/bF: boundary precision, recall, F with a {cfg['tolerance_px']:g} px tolerance (counts summed over images);
cov: segmentation covering of the ground truth; mIoU: each predicted segment takes its majority ground-truth label
(rewards over-segmentation: compare at equal segment counts); VI: variation of information in nats (lower is better);
PRI: Rand index. Region scores are means over images. Object GT: object vs background; part GT: background and the
object's three parts.</p>
{_segmentation_table(metrics)}
{_figure(out, 'levels.png', 'headline metrics per level; dashed: the superpixels alone')}
<h3>Boundary F across levels</h3>
<p>ODS: the best single level for the whole test set; OIS: the best level per image (levels 1..{len(cfg['num_clusters'])}).</p>
{_ods_table(metrics)}

<h2>Does training beat the baselines?</h2>
<p>Paired bootstrap over test images ({metrics['comparison']['num_resamples']} resamples): a <em>win</em> is a 95%
interval of the gain above zero, a <em>loss</em> below zero, anything else a tie. Against the superpixels alone the
trained model's best level is used.</p>
{_comparison_table(metrics)}

<h2>Examples</h2>
{example_figs}

<h2>Run</h2>
<p>Timing: {_esc(timing_text)}.</p>
<pre>{_esc(metrics.get('table', ''))}</pre>
<p>Configuration: <code>{_esc(config_text)}</code></p>
<p>Files: <a href="metrics.json">metrics.json</a> (every number on this page),
<a href="predictions.npz">predictions.npz</a> (label maps of every method and level, ground truth, predicted classes;
the numbers can be recomputed from it with <code>castvit.eval</code>).</p>
</body></html>
"""
