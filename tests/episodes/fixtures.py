"""Small synthetic datasets in the real layouts, for source and builder tests.

Every image is a few random strokes (lines and an arc) drawn from a seed, so a test can
recompute what a source must return: the builders return the expected ink-high arrays.

- :func:`make_omniglot_zip` / :func:`make_omniglot_dir`: the Omniglot release layout,
  ``<top>/<Alphabet>/characterNN/NNNN_DD.png``, 1-bit PNGs, black ink on white.
- :func:`make_lake_runs`: ``all_runs`` (``runNN/training``, ``runNN/test``, ``class_labels.txt``).
- :func:`make_folder_tree`: ``ROOT/<class>/<image>`` or ``ROOT/<group>/<class>/<image>``.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def image_seed(*parts: int) -> int:
    """A seed for one image from integers (dataset seed, class, image, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def ink_mask(seed: int, size: int | tuple[int, int] = 105) -> np.ndarray:
    """``bool [H, W]``, True = ink: 2-4 strokes, 2-5 px wide, kept off the border by 10%."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    lo_x, hi_x, lo_y, hi_y = 0.1 * w, 0.9 * w, 0.1 * h, 0.9 * h

    def point():
        return (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))

    for _ in range(int(rng.integers(2, 5))):
        draw.line([point(), point(), point()], fill=255, width=int(rng.integers(2, 6)))
    (x0, y0), (x1, y1) = point(), point()
    box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
    draw.arc(box, start=float(rng.uniform(0, 180)), end=float(rng.uniform(180, 360)), fill=255, width=2)
    return np.asarray(canvas) >= 128


def png_1bit(mask: np.ndarray) -> bytes:
    """A 1-bit PNG of ``mask`` as Omniglot stores it: ink black (0), paper white (1)."""
    buf = io.BytesIO()
    Image.fromarray(~mask).save(buf, format="PNG")  # bool -> mode "1"
    return buf.getvalue()


def omniglot_files(alphabets: dict[str, int], images_per_class: int = 20, size: int = 105, seed: int = 0,
                   first_character_id: int = 1):
    """``([(relative path below the top folder, PNG bytes)], {(alphabet, character): uint8 [n, H, W]})``."""
    files, expected = [], {}
    char_id = first_character_id
    for a_index, alphabet in enumerate(alphabets):
        for c in range(1, alphabets[alphabet] + 1):
            character = f"character{c:02d}"
            masks = []
            for k in range(1, images_per_class + 1):
                mask = ink_mask(image_seed(seed, a_index, c, k), size)
                files.append((f"{alphabet}/{character}/{char_id:04d}_{k:02d}.png", png_1bit(mask)))
                masks.append(mask)
            expected[alphabet, character] = np.stack(masks).astype(np.uint8) * 255
            char_id += 1
    return files, expected


def make_omniglot_zip(path, alphabets=None, images_per_class=20, top="images_background", size=105, seed=0,
                      dir_entries=True):
    """Write an Omniglot release zip (``top=None``: no top folder); returns the expected arrays."""
    alphabets = {"Alpha": 3, "Beta": 2} if alphabets is None else alphabets
    files, expected = omniglot_files(alphabets, images_per_class, size, seed)
    prefix = f"{top}/" if top else ""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        written = set()
        for rel, data in files:
            if dir_entries:  # the real zips list their folders, as "images_background/Alpha/"
                parts = f"{prefix}{rel}".split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i]) + "/"
                    if d not in written:
                        zf.writestr(d, b"")
                        written.add(d)
            zf.writestr(f"{prefix}{rel}", data)
    return expected


def make_omniglot_dir(root, alphabets=None, images_per_class=20, top="images_background", size=105, seed=0):
    """The unzipped variant: ``root/<top>/<Alphabet>/...`` (``top=None``: ``root`` is the top)."""
    alphabets = {"Alpha": 3, "Beta": 2} if alphabets is None else alphabets
    files, expected = omniglot_files(alphabets, images_per_class, size, seed)
    base = Path(root) / top if top else Path(root)
    for rel, data in files:
        f = base / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return expected


def make_lake_runs(path, runs=2, ways=20, size=105, seed=0, top=None):
    """Write ``all_runs`` (a zip when ``path`` ends in ``.zip``, else a folder; ``top``: a folder above
    the runs). Item ``j`` of a run is a copy of its class's training image, so a correct pairing
    gives ``targets[j] == memory[labels[j]]``. Returns, per run, the labels in item order."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    entries: list[tuple[str, bytes]] = []
    all_labels = []
    prefix = f"{top}/" if top else ""
    for r in range(1, runs + 1):
        run = f"run{r:02d}"
        masks = [ink_mask(image_seed(seed, 1000 + r, k), size) for k in range(ways)]
        labels = rng.permutation(ways).tolist()  # item j is of class labels[j]
        lines = []
        for k in range(ways):
            entries.append((f"{prefix}{run}/training/class{k + 1:02d}.png", png_1bit(masks[k])))
        for j, k in enumerate(labels):
            entries.append((f"{prefix}{run}/test/item{j + 1:02d}.png", png_1bit(masks[k])))
            lines.append(f"{run}/test/item{j + 1:02d}.png {run}/training/class{k + 1:02d}.png")
        entries.append((f"{prefix}{run}/class_labels.txt", ("\n".join(lines) + "\n").encode()))
        all_labels.append(labels)
    if path.suffix == ".zip":
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel, data in entries:
                zf.writestr(rel, data)
    else:
        for rel, data in entries:
            f = path / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
    return all_labels


def make_folder_tree(root, grouped=False, groups=("Cyrillic", "Runic"), classes=3, images_per_class=4,
                     size=(32, 40), ink="dark", fmt="png", seed=0):
    """Write ``root/<class>/<image>`` (or ``root/<group>/<class>/<image>`` when ``grouped``) as 8-bit
    greyscale images; ``ink="dark"``: black strokes on white, ``"light"``: white on black.
    Returns ``{(group or "", class): uint8 [n, H, W]}`` ink-high (exact for lossless ``fmt``)."""
    root = Path(root)
    expected = {}
    for g_index, group in enumerate(groups if grouped else [""]):
        for c in range(classes):
            cls = f"class_{c:02d}"
            base = root / group / cls if group else root / cls
            base.mkdir(parents=True, exist_ok=True)
            masks = []
            for k in range(images_per_class):
                mask = ink_mask(image_seed(seed, g_index, c, k), size)
                grey = np.where(mask, 0, 255) if ink == "dark" else np.where(mask, 255, 0)
                Image.fromarray(grey.astype(np.uint8)).save(base / f"img_{k:03d}.{fmt}")
                masks.append(mask)
            expected[group, cls] = np.stack(masks).astype(np.uint8) * 255
    return expected
