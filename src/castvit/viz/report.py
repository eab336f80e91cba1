"""Figures and the one-page HTML report of ``castvit demo``.

:func:`write_figures` (from the demo's metrics, the content of ``metrics.json``, and its
predictions, the arrays of ``predictions.npz`` with keys ``"<family>.<name>"``) and then
:func:`write_html` write into the report folder, for every scene family F:

* ``F_examples_K.png``: test image ``K`` with its ground truth and superpixels, then one
  row per method with its levels 1..4 (segments in distinct colours over the image,
  boundaries in white);
* ``F_levels.png``: each headline metric per level and method, object and part GT;
* ``F_training_curve.png``: loss and accuracy per epoch of every trained model;
* ``index.html``: the side-by-side summary of every family and method, then each
  family's tables and figures, in one self-contained page (figures embedded as data
  URIs and linked to their files; no script, no external resource).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from castvit.ops import label_boundaries

METHOD_LABELS = {"trained": "trained CAST (authors', level 4 frozen)",
                 "trained_l4": "trained CAST (head on level 4, every level learned)", "tome": "ToMe, traced merges",
                 "vit_kmeans": "ViT + spherical k-means", "untrained": "untrained CAST",
                 "colour_grouping": "colour grouping", "superpixels": "superpixels"}
METHOD_COLOURS = {"trained": "#d62728", "trained_l4": "#ff7f0e", "tome": "#9467bd", "vit_kmeans": "#8c564b",
                  "untrained": "#7f7f7f", "colour_grouping": "#1f77b4", "superpixels": "#2ca02c"}
GROUPING = ("trained", "trained_l4", "tome", "vit_kmeans", "untrained", "colour_grouping")
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
    methods = [m for m in GROUPING if f"levels_{m}" in predictions]
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
                title = f"{_short_label(m)}{said}\n{title}"
            ax.set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short_label(method: str) -> str:
    """A method's label without its parenthesis, keeping the two trained CASTs apart."""
    return METHOD_LABELS.get(method, method).split(" (")[0] + (" (all levels)" if method == "trained_l4" else "")


def plot_levels(family: dict[str, Any], clusters: list[int], path: Path) -> None:
    """Headline metrics per level of one family: one panel per (GT, metric), one line
    per method; the superpixels alone are a dashed horizontal line."""
    import matplotlib.pyplot as plt

    seg = family["segmentation"]
    gts = ("object", "parts")
    fig, axes = plt.subplots(len(gts), len(METRICS), figsize=(3.3 * len(METRICS), 2.9 * len(gts)), squeeze=False)
    for r, g in enumerate(gts):
        for c, (key, title) in enumerate(METRICS):
            ax = axes[r, c]
            for m in (m for m in GROUPING if m in seg):
                recs = [rec for rec in seg[m]["levels"] if rec["level"] > 0]
                ax.plot([rec["level"] for rec in recs], [rec[g][key] for rec in recs], "o-",
                        color=METHOD_COLOURS[m], label=_short_label(m))
            sp = seg["superpixels"]["levels"][0]
            ax.axhline(sp[g][key], ls="--", color=METHOD_COLOURS["superpixels"],
                       label=f"superpixels ({sp['num_segments']:.0f})")
            ax.set_xticks(range(1, len(clusters) + 1))
            ax.set_xticklabels([f"{i + 1}\n({k})" for i, k in enumerate(clusters)], fontsize=8)
            ax.set_title(f"{family['family']}, {g} GT: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if r == len(gts) - 1:
                ax.set_xlabel("level (segments)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curve(histories: dict[str, dict[str, list]], chance: float, path: Path) -> None:
    """Training loss, and training / test accuracy, per epoch of every trained model."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, history in histories.items():
        epochs = [int(e) + 1 for e in history.get("epoch", [])]
        if not epochs:
            continue
        colour, label = METHOD_COLOURS.get(name, None), _short_label(name)
        ax_loss.plot(epochs, history["train_loss"], "o-", color=colour, label=f"{label}: train", ms=3)
        ax_acc.plot(epochs, history["train_acc"], "o-", color=colour, label=f"{label}: train", ms=3)
        pts = [(e, v) for e, v in zip(epochs, history.get("val_acc", [])) if v is not None]
        if pts:
            ax_acc.plot(*zip(*pts), "s--", color=colour, label=f"{label}: test", ms=3)
    ax_acc.axhline(chance, ls=":", color="grey", label="chance")
    ax_acc.set_ylim(0, 1)
    for ax, title in ((ax_loss, "training cross-entropy"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=6, loc="lower right")
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


def family_predictions(predictions: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """The arrays of one family, without the ``"<family>."`` key prefix."""
    prefix = f"{family}."
    return {k[len(prefix):]: v for k, v in predictions.items() if k.startswith(prefix)}


def write_figures(out_dir: str | Path, metrics: dict[str, Any], predictions: dict[str, np.ndarray]) -> list[str]:
    """Write the PNG figures of every family; return their names (relative to
    ``out_dir``). The example images of family F go to ``metrics["families"][F]["examples"]``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    out = Path(out_dir)
    cfg = metrics["config"]
    files: list[str] = []
    for family, fam in metrics["families"].items():
        preds = family_predictions(predictions, family)
        fam["examples"] = example_indices(preds["label"], cfg["num_examples"])
        for i in fam["examples"]:
            name = f"{family}_examples_{i}.png"
            plot_example(preds, i, list(cfg["num_clusters"]), fam["data"]["class_names"], out / name)
            files.append(name)
        plot_levels(fam, list(cfg["num_clusters"]), out / f"{family}_levels.png")
        plot_training_curve(fam.get("history", {}), fam["classification"]["chance"],
                            out / f"{family}_training_curve.png")
        files += [f"{family}_levels.png", f"{family}_training_curve.png"]
    return files


def write_html(out_dir: str | Path, metrics: dict[str, Any]) -> str:
    """Write ``index.html`` (the figures must exist); return its name."""
    out = Path(out_dir)
    (out / "index.html").write_text(render_html(metrics, out), encoding="utf-8")
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


def _order(seg: dict[str, Any]) -> list[str]:
    return [m for m in ("superpixels", *GROUPING) if m in seg]


def _segmentation_table(family: dict[str, Any]) -> str:
    seg = family["segmentation"]
    keys = [("boundary_precision", "bP"), ("boundary_recall", "bR"), ("boundary_f", "bF"), ("covering", "cov"),
            ("miou", "mIoU"), ("vi", "VI"), ("pri", "PRI")]
    head = "".join(f"<th>{_esc(s)}</th>" for _, s in keys)
    rows = [f"<tr><th rowspan=2>method</th><th rowspan=2>level</th><th rowspan=2>segments</th>"
            f"<th colspan={len(keys)}>object GT</th><th colspan={len(keys)}>part GT</th></tr>",
            f"<tr>{head}{head}</tr>"]
    for m in _order(seg):
        for rec in seg[m]["levels"]:
            if m != "superpixels" and rec["level"] == 0:
                continue
            cells = "".join(f"<td>{rec[g][k]:.3f}</td>" for g in ("object", "parts") for k, _ in keys)
            rows.append(f'<tr><td class="name">{_esc(METHOD_LABELS[m])}</td><td>{rec["level"]}</td>'
                        f'<td>{rec["num_segments"]:.1f}</td>{cells}</tr>')
    return "<table>" + "".join(rows) + "</table>"


def _ods_table(family: dict[str, Any]) -> str:
    seg = family["segmentation"]
    rows = ["<tr><th>method</th><th>object ODS F (level)</th><th>object OIS F</th><th>part ODS F (level)</th>"
            "<th>part OIS F</th><th>hierarchy consistency</th></tr>"]
    for m in _order(seg):
        oo = seg[m]["ods_ois"]
        cells = "".join(f'<td>{oo[g]["ods_f"]:.3f} ({oo[g]["ods_level"]})</td><td>{oo[g]["ois_f"]:.3f}</td>'
                        for g in ("object", "parts"))
        rows.append(f'<tr><td class="name">{_esc(METHOD_LABELS[m])}</td>{cells}'
                    f'<td>{seg[m]["hierarchy_consistency"]:.3f}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def _summary_table(metrics: dict[str, Any]) -> str:
    """One row per family and method: accuracy, covering per level, ODS, both GTs."""
    levels = list(range(1, len(metrics["config"]["num_clusters"]) + 1))
    head = "".join(f"<th>L{k}</th>" for k in levels) + "<th>ODS F</th>"
    rows = [f"<tr><th rowspan=2>family</th><th rowspan=2>method</th><th rowspan=2>test accuracy</th>"
            f"<th colspan={len(levels) + 1}>object GT: covering per level, boundary ODS</th>"
            f"<th colspan={len(levels) + 1}>part GT: covering per level, boundary ODS</th></tr>",
            f"<tr>{head}{head}</tr>"]
    for family, fam in metrics["families"].items():
        for m in metrics["methods"]:
            seg = fam["segmentation"][m]
            recs = {rec["level"]: rec for rec in seg["levels"]}
            acc = fam["classification"].get(m, {}).get("acc")
            cells = ""
            for g in ("object", "parts"):
                for k in levels:
                    rec = recs.get(k, recs[0] if m == "superpixels" and k == 1 else None)
                    cells += f"<td>{rec[g]['covering']:.3f}</td>" if rec else "<td>–</td>"
                cells += f"<td>{seg['ods_ois'][g]['ods_f']:.3f}</td>"
            acc_cell = f"{acc:.3f}" if acc is not None else "–"
            rows.append(f'<tr><td class="name">{_esc(family)}</td><td class="name">{_esc(METHOD_LABELS[m])}</td>'
                        f"<td>{acc_cell}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _comparison_table(family: dict[str, Any]) -> str:
    parts = []
    for reference, comp in family["comparisons"].items():
        for base, rows in comp["pairs"].items():
            c = comp["counts"][base]
            body = ["<tr><th>GT</th><th>metric</th><th>level</th><th>model</th><th>baseline</th>"
                    "<th>gain</th><th>95% interval</th><th>outcome</th></tr>"]
            for r in rows:
                level = r["level"] if r["baseline_level"] == r["level"] else f'{r["level"]} vs {r["baseline_level"]}'
                body.append(f'<tr class="{_esc(r["outcome"])}"><td class="name">{_esc(r["gt"])}</td>'
                            f'<td class="name">{_esc(r["metric"])}</td><td>{_esc(level)}</td>'
                            f'<td>{r["trained"]:.3f}</td><td>{r["baseline"]:.3f}</td><td>{r["diff"]:+.3f}</td>'
                            f'<td>[{r["low"]:+.3f}, {r["high"]:+.3f}]</td><td>{_esc(r["outcome"])}</td></tr>')
            parts.append(f"<details><summary>{_esc(METHOD_LABELS[reference])} vs {_esc(METHOD_LABELS[base])}: "
                         f"{c['win']} wins, {c['loss']} losses, {c['tie']} ties</summary>"
                         f"<table>{''.join(body)}</table></details>")
    return "".join(parts)


def _classification_table(family: dict[str, Any]) -> str:
    cls = family["classification"]
    rows = ["<tr><th>model</th><th>test accuracy</th></tr>"]
    for m, rec in cls.items():
        if m != "chance":
            rows.append(f'<tr><td class="name">{_esc(METHOD_LABELS.get(m, m))}</td><td>{rec["acc"]:.3f}</td></tr>')
    rows.append(f'<tr><td class="name">chance</td><td>{cls["chance"]:.3f}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


FAMILY_TEXT = {
    "colour": "every part has its own colour, distinct from the background: a colour clustering finds the parts "
              "without recognising anything.",
    "camouflage": "parts, distractor parts and a patchwork background share three colours and the same textures: "
                  "only the shape and layout of the parts tell the object from the clutter.",
}


def _family_section(metrics: dict[str, Any], family: dict[str, Any], out: Path) -> str:
    name = family["family"]
    beats = [all(c["beats"].values()) for c in family["comparisons"].values()]
    anyb = [any(c["beats"].values()) for c in family["comparisons"].values()]
    mood = "good" if all(beats) else "bad" if not any(anyb) else "mixed"
    data = family["data"]
    example_figs = "".join(_figure(out, f"{name}_examples_{i}.png",
                                   f"{name} test image {i}: ground truth, superpixels, and each method's levels")
                           for i in family.get("examples", []))
    return f"""
<h2>{_esc(name)} scenes</h2>
<p>{_esc(FAMILY_TEXT.get(name, ''))} {data['num_train']} training and {data['num_test']} test scenes;
{data['superpixels_per_image']:.1f} superpixels per image ({data['superpixels_with_token']:.1f} of them own a token).</p>
<p class="verdict {mood}">{_esc(family['verdict'])}</p>
<h3>Classification</h3>
{_classification_table(family)}
{_figure(out, f'{name}_training_curve.png', 'training loss and accuracy per epoch (the test accuracy is reported, never used for selection)')}
<h3>Segmentation per level</h3>
{_segmentation_table(family)}
{_figure(out, f'{name}_levels.png', 'headline metrics per level; dashed: the superpixels alone')}
<h3>Boundary F across levels</h3>
<p>ODS: the best single level for the whole test set; OIS: the best level per image (levels 1..{len(metrics['config']['num_clusters'])}).</p>
{_ods_table(family)}
<h3>Does training beat the baselines?</h3>
{_comparison_table(family)}
<h3>Examples</h3>
{example_figs}
"""


def render_html(metrics: dict[str, Any], out: Path) -> str:
    """The report page (figures read from ``out`` and embedded)."""
    cfg = metrics["config"]
    timing_text = json.dumps(metrics.get("timing", {}))
    config_text = json.dumps(cfg, indent=None)
    sections = "".join(_family_section(metrics, fam, out) for fam in metrics["families"].values())
    verdicts = "".join(f"<li><b>{_esc(f)}</b>: {_esc(v)}</li>" for f, v in metrics["verdicts"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>castvit demo report</title><style>{_CSS}</style></head>
<body>
<h1>castvit demo: a segmentation hierarchy learned by classification alone</h1>
<p>Small CASTs were trained to classify synthetic scenes ({cfg['image_size']}×{cfg['image_size']} px,
{cfg['num_classes']} classes) for {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, one family of scenes at a
time. They never saw a mask. Their graph pooling groups the superpixels into levels of
{_esc(', '.join(map(str, cfg['num_clusters'])))} segments, and each level is scored against the object mask and the part
mask next to the baselines: the same CAST untrained, the superpixels alone, a non-learned colour grouping of the same
superpixels (Ward clustering of adjacent superpixels on mean CIELAB colour, cut at the same segment counts), and, when
trained, ToMe on the same superpixel tokens with its merges traced, and a superpixel ViT whose tokens are clustered by
hierarchical spherical k-means. <em>CAST (authors')</em> is the classifier as published: its head reads the cls token,
so the last pooling is never trained and level 4 stays random. <em>CAST (all levels)</em> has its head on the pooled
level-4 tokens instead, so every level is learned.</p>
<ul>{verdicts}</ul>
<h2>Summary: every family and method</h2>
<p>Covering of the ground truth by each level's segments, and boundary F at the best level for the whole test set (ODS,
{cfg['tolerance_px']:g} px tolerance). Each family has its own trained models.</p>
{_summary_table(metrics)}
<p>bP/bR/bF below: boundary precision, recall, F (counts summed over images); cov: segmentation covering; mIoU: each
predicted segment takes its majority ground-truth label (rewards over-segmentation: compare at equal segment counts);
VI: variation of information in nats (lower is better); PRI: Rand index. A <em>win</em> is a 95% paired-bootstrap
interval ({cfg['bootstrap']} resamples over test images) of the gain above zero, a <em>loss</em> below zero, anything
else a tie; against the superpixels alone the model's best level is used.</p>
{sections}
<h2>Run</h2>
<p>Timing (seconds): <code>{_esc(timing_text)}</code>.</p>
<pre>{_esc(metrics.get('table', ''))}</pre>
<p>Configuration: <code>{_esc(config_text)}</code></p>
<p>Files: <a href="metrics.json">metrics.json</a> (every number on this page),
<a href="predictions.npz">predictions.npz</a> (label maps of every method and level, ground truth, predicted classes,
keys <code>family.name</code>; the numbers can be recomputed from it with <code>castvit.eval</code>).</p>
</body></html>
"""
