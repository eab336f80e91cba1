"""Open-vocabulary part / whole segmentation on PartImageNet (PROTOCOLS §4).

The segments come from a hierarchy — level 4 (8 segments) are objects, level 3 (16)
parts — or from any other source that gives a list of masks per image (SAM's
automatic masks, say); CLIP names them. Nothing is trained.

Per image (:func:`evaluate_partimagenet`):

1. **View**: resize so the short side is ``size`` (224; bilinear for the image,
   nearest for the ground truth), centre crop ``size``×``size``.
2. **Masks** (a :class:`MaskSource`): ``{"object": [...], "part": [...]}`` boolean masks
   on the view. :class:`HierarchyMasks` reads them off a CAST hierarchy (SEEDS on the
   view with the model's settings, 196 for CAST-B); :class:`MaskFolder` reads
   precomputed ones (e.g. SAM ViT-H automatic masks) from ``.npz`` files.
3. **Naming** (a :class:`SegmentLabeller`; :class:`CLIPLabeller` is ViT-B/16): each object
   mask is named among the supercategories + ``"Background"``; the masks are painted
   largest first (a later, smaller mask overwrites), unpainted pixels are background
   (coarse index S = 11). Each part mask takes the supercategory predicted at its first
   pixel (row-major) on that coarse map; on background it is background (fine index
   P = 40), else it is named among that supercategory's parts; painted the same way.
4. **Score**: multiclass Jaccard per image — the mean IoU over the classes present in
   the ground truth or the prediction of that image (classes absent from both are left
   out, as the macro ``MulticlassJaccardIndex`` of torchmetrics 1.x does) — averaged over images,
   for the coarse (12-class) and the fine (41-class) maps.

An image that raises stops the run with its path; with ``skip_errors=True`` it is
counted and listed in the result instead (the authors' notebooks skipped such images
silently).

**CLIP** comes from Hugging Face ``transformers`` (``pip install 'castvit[clip]'``),
imported only when a :class:`CLIPLabeller` is made; torchvision is not needed. The
view is brought to CLIP's input in torch: short side to CLIP's ``image_size``
(bicubic), centre crop, CLIP mean / std; then every pixel outside the mask is set to
0.5 in that normalised space, and the image embedding is compared (cosine) with the
text embeddings of ``"a photo of a {name}"``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from castvit.data.partimagenet import PartVocabulary

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT = "a photo of a {}"
BACKGROUND = "Background"
CLIP_INSTALL = "pip install 'castvit[clip]'  (or: pip install 'transformers>=4.40')"


class ImageFailed(RuntimeError):
    """An image of the benchmark could not be scored; the message names it."""


# ------------------------------------------------------------------ view and metric


def center_view(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize so the short side is ``size`` (long side ``int(size·long/short)``), then crop
    the centre ``size``×``size`` (offsets rounded). Bilinear for images, nearest for label
    maps (``nearest=True``, any integer dtype)."""
    from PIL import Image

    arr = np.asarray(image)
    h, w = arr.shape[:2]
    if min(h, w) < 1:
        raise ValueError(f"empty image {w}×{h}")
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    if (nh, nw) != (h, w):
        if nearest:
            rows = np.minimum((np.arange(nh) * h / nh).astype(np.int64), h - 1)
            cols = np.minimum((np.arange(nw) * w / nw).astype(np.int64), w - 1)
            arr = arr[rows[:, None], cols[None, :]]
        else:
            arr = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def image_jaccard(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in ``target`` or ``pred`` (union > 0)."""
    p = np.asarray(pred, dtype=np.int64).ravel()
    t = np.asarray(target, dtype=np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction {np.shape(pred)} and target {np.shape(target)} differ in shape")
    for name, a in (("prediction", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} values must be in 0..{num_classes - 1}")
    conf = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def paint_largest_first(masks: Sequence[np.ndarray], labels: Sequence[int], shape: tuple[int, int],
                        background: int) -> np.ndarray:
    """Paint ``labels`` through ``masks`` in order of decreasing area (equal areas: list
    order), so smaller masks overwrite larger ones; unpainted pixels are ``background``."""
    out = np.full(shape, background, dtype=np.int64)
    areas = [int(np.count_nonzero(m)) for m in masks]
    for i in sorted(range(len(masks)), key=lambda j: -areas[j]):
        out[np.asarray(masks[i], dtype=bool)] = int(labels[i])
    return out


# ------------------------------------------------------------------ labellers


class SegmentLabeller(Protocol):
    """Names masks of an image: ``label(image, masks, names)`` returns, for each mask, the
    index into ``names`` of its name."""

    def label(self, image: np.ndarray, masks: Sequence[np.ndarray], names: Sequence[str]) -> list[int]: ...


def require_transformers():
    """Import ``transformers`` or raise ImportError saying what to install."""
    try:
        import transformers
    except ImportError:
        raise ImportError("CLIP needs the optional 'transformers' package, which is not installed: "
                          f"{CLIP_INSTALL}") from None
    return transformers


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4.x, a model output (the
    projected embedding in ``pooler_output``) in 5.x."""
    if torch.is_tensor(out):
        return out
    return out.pooler_output


class CLIPLabeller:
    """Name masks with CLIP (module docstring, step 3).

    Args:
        model: a ``transformers`` ``CLIPModel``.
        tokenizer: its tokenizer (any callable returning ``input_ids`` / ``attention_mask``).
        mean, std: CLIP's normalisation; ``image_size``: CLIP's input side (default:
            the model's ``vision_config.image_size``).
        prompt: text template.
        device: where CLIP runs (default: the model's device).
        batch_size: masked images per forward pass.
    """

    def __init__(self, model, tokenizer, *, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 image_size: int | None = None, prompt: str = PROMPT, device: str | torch.device | None = None,
                 batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.prompt = prompt
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.batch_size = int(batch_size)
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "openai/clip-vit-base-patch16", *,
                        device: str | torch.device | None = None, **kwargs: Any) -> "CLIPLabeller":
        """Load CLIP (model and tokenizer) from a local folder or a hub id; mean, std and
        input size from the folder's ``preprocessor_config.json`` when it has one."""
        transformers = require_transformers()
        try:
            model = transformers.CLIPModel.from_pretrained(str(name_or_path))
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(name_or_path))
        except OSError as exc:
            raise FileNotFoundError(f"cannot load CLIP from {str(name_or_path)!r}: {str(exc).splitlines()[0]}; "
                                    "give a local folder holding a CLIPModel and its tokenizer "
                                    "(save_pretrained), or a hub id reachable from this machine") from None
        pre = Path(name_or_path) / "preprocessor_config.json"
        if pre.is_file():
            import json

            cfg = json.loads(pre.read_text())
            kwargs.setdefault("mean", cfg.get("image_mean", CLIP_MEAN))
            kwargs.setdefault("std", cfg.get("image_std", CLIP_STD))
        return cls(model, tokenizer, device=device, **kwargs)

    def preprocess(self, image: np.ndarray, masks: Sequence[np.ndarray]) -> torch.Tensor:
        """``len(masks)×3×S×S`` CLIP inputs: the normalised view with every pixel outside
        each mask set to 0.5."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255.0
        m = torch.from_numpy(np.stack([np.asarray(mk, dtype=np.float32) for mk in masks]))[:, None]
        h, w = x.shape[-2:]
        s = self.image_size
        nh, nw = (s, max(s, int(round(s * w / h)))) if h <= w else (max(s, int(round(s * h / w))), s)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            m = F.interpolate(m, size=(nh, nw), mode="nearest")
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[..., top:top + s, left:left + s]
        m = m[..., top:top + s, left:left + s] > 0.5
        x = (x - self.mean) / self.std
        return torch.where(m, x.expand(len(masks), -1, -1, -1), torch.full_like(x, 0.5))

    @torch.no_grad()
    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        key = tuple(names)
        if key not in self._text:
            enc = self.tokenizer([self.prompt.format(n) for n in names], padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            self._text[key] = F.normalize(_features(self.model.get_text_features(**enc)).float(), dim=-1)
        return self._text[key]

    @torch.no_grad()
    def label(self, image: np.ndarray, masks: Sequence[np.ndarray], names: Sequence[str]) -> list[int]:
        if not masks:
            return []
        text = self.text_embeddings(names)
        out = []
        for i in range(0, len(masks), self.batch_size):
            x = self.preprocess(image, masks[i:i + self.batch_size]).to(self.device)
            dtype = next(self.model.parameters()).dtype
            emb = F.normalize(_features(self.model.get_image_features(pixel_values=x.to(dtype))).float(), dim=-1)
            out += (emb @ text.T).argmax(1).tolist()
        return out


# ------------------------------------------------------------------ mask sources


class MaskSource(Protocol):
    """``source(view, item)`` → ``{"object": [H×W bool, ...], "part": [...]}`` on the view."""

    def __call__(self, view: np.ndarray, item: dict[str, Any]) -> dict[str, list[np.ndarray]]: ...


class HierarchyMasks:
    """Object and part masks from a CAST hierarchy: the segments of ``object_level`` (4)
    and ``part_level`` (3), in order of segment id.

    Args:
        model: a CAST (e.g. ``castvit.create_model("cast_base.moco_in1k")``).
        superpixel_options: overrides of the model's superpixel settings.
        n_segments: superpixels per view (default: the model's count, 196 at 224²).
    """

    def __init__(self, model: torch.nn.Module, *, object_level: int = 4, part_level: int = 3,
                 n_segments: int | None = None, superpixel_options: dict[str, Any] | None = None):
        from castvit.inference import HierarchyPredictor

        self.predictor = HierarchyPredictor(model, size=None, n_segments=n_segments,
                                            superpixel_options=superpixel_options, num_workers=0, batch_size=1)
        self.object_level, self.part_level = int(object_level), int(part_level)

    def __call__(self, view: np.ndarray, item: dict[str, Any]) -> dict[str, list[np.ndarray]]:
        hier = self.predictor.predict(view)
        out = {}
        for key, level in (("object", self.object_level), ("part", self.part_level)):
            lab = hier.label_map(level)
            out[key] = [lab == s for s in np.unique(lab)]
        return out


class MaskFolder:
    """Precomputed masks, one ``.npz`` per image named after the image file's stem, with
    ``object`` and ``part`` arrays (``N×H×W`` bool, at the view's size); a file with a
    single ``masks`` array (SAM's automatic masks) serves both levels."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"mask folder {str(self.folder)!r} does not exist")

    def __call__(self, view: np.ndarray, item: dict[str, Any]) -> dict[str, list[np.ndarray]]:
        path = self.folder / f"{Path(item['path']).stem}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no masks {str(path)!r} for image {item['path']!r}")
        with np.load(path) as z:
            if "masks" in z.files:
                obj = part = z["masks"]
            elif {"object", "part"} <= set(z.files):
                obj, part = z["object"], z["part"]
            else:
                raise ValueError(f"{str(path)!r} must hold 'masks' or 'object' and 'part' arrays (N×H×W bool)")
        out = {"object": [m.astype(bool) for m in obj], "part": [m.astype(bool) for m in part]}
        for key, ms in out.items():
            for m in ms:
                if m.shape != view.shape[:2]:
                    raise ValueError(f"{str(path)!r}: {key} mask {m.shape} does not match the {view.shape[:2]} view")
        return out


# ------------------------------------------------------------------ protocol


def label_image(view: np.ndarray, object_masks: Sequence[np.ndarray], part_masks: Sequence[np.ndarray],
                labeller: SegmentLabeller, vocab: PartVocabulary) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse, fine)`` predicted maps of one view (module docstring, step 3)."""
    shape = view.shape[:2]
    coarse_names = list(vocab.supercategories) + [BACKGROUND]
    obj = labeller.label(view, list(object_masks), coarse_names)
    for v in obj:
        if not 0 <= v < len(coarse_names):
            raise ValueError(f"the labeller returned {v} for {len(coarse_names)} names")
    coarse = paint_largest_first(object_masks, obj, shape, vocab.coarse_background)
    fine_labels = [vocab.fine_background] * len(part_masks)
    by_super: dict[int, list[int]] = {}
    for i, m in enumerate(part_masks):
        flat = np.flatnonzero(np.asarray(m, dtype=bool))
        if flat.size == 0:
            continue
        sup = int(coarse.flat[flat[0]])
        if sup != vocab.coarse_background:
            by_super.setdefault(sup, []).append(i)
    for sup, idx in by_super.items():
        parts = vocab.parts_of(sup)
        got = labeller.label(view, [part_masks[i] for i in idx], [vocab.part_names[p] for p in parts])
        for i, g in zip(idx, got):
            fine_labels[i] = parts[g]
    fine = paint_largest_first(part_masks, fine_labels, shape, vocab.fine_background)
    return coarse, fine


def evaluate_partimagenet(dataset, masks: MaskSource, labeller: SegmentLabeller, *, size: int = 224,
                          skip_errors: bool = False, max_images: int | None = None, progress: bool = False
                          ) -> dict[str, Any]:
    """Score a :class:`~castvit.data.partimagenet.PartImageNet` split (module docstring).

    Returns ``object_miou`` / ``part_miou`` (means over scored images, in [0, 1]),
    ``per_image`` (path, object / part Jaccard), ``count`` (scored), ``failed``
    (``[{"path", "error"}]``, only with ``skip_errors``).
    """
    vocab: PartVocabulary = dataset.vocab
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=n, desc="partimagenet", unit="img", dynamic_ncols=True)
    per_image, failed = [], []
    for i in it:
        path = None
        try:
            path = str(dataset.image_path(i))
            item = dataset[i]
            view = center_view(item["image"], size)
            coarse_t = center_view(item["coarse"], size, nearest=True)
            fine_t = center_view(item["fine"], size, nearest=True)
            got = masks(view, item)
            coarse_p, fine_p = label_image(view, got["object"], got["part"], labeller, vocab)
            per_image.append({"path": path, "object": image_jaccard(coarse_p, coarse_t, vocab.num_coarse),
                              "part": image_jaccard(fine_p, fine_t, vocab.num_fine)})
        except Exception as exc:  # every failure is either fatal or counted and listed
            where = path or f"#{i}"
            if not skip_errors:
                raise ImageFailed(f"image {where} failed: {type(exc).__name__}: {exc}. Fix the file, or pass "
                                  "--skip-errors (skip_errors=True) to count and list failing images") from exc
            failed.append({"path": where, "error": f"{type(exc).__name__}: {exc}"})
    obj = [r["object"] for r in per_image]
    part = [r["part"] for r in per_image]
    return {"object_miou": float(np.mean(obj)) if obj else math.nan,
            "part_miou": float(np.mean(part)) if part else math.nan,
            "count": len(per_image), "num_images": n, "failed": failed, "per_image": per_image,
            "num_coarse": vocab.num_coarse, "num_fine": vocab.num_fine}


__all__ = ["CLIPLabeller", "HierarchyMasks", "ImageFailed", "MaskFolder", "MaskSource", "SegmentLabeller",
           "center_view", "evaluate_partimagenet", "image_jaccard", "label_image", "paint_largest_first",
           "require_transformers"]
