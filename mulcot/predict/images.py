"""The pixels both backends see: an image is read and downsized (aspect kept) once, then handed to llama.cpp and to
transformers as a lossless PNG, so the two get exactly the same pixels."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from mulcot.errors import DataError, NotFoundError
from mulcot.train.items import DEFAULT_MAX_PIXELS


def prepare_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_side: int | None = None) -> Any:  # fmt: skip
    """An RGB PIL image from ``path``, downsized (aspect kept) to at most ``max_pixels`` pixels and ``max_side``
    pixels on its longer side. Both backends see exactly these pixels."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
    except Image.DecompressionBombError as err:
        raise DataError(f"the image is too large to decode safely ({err.args[0].split(',')[0]}): downsize it",
                        file=str(p)) from None  # fmt: skip
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read the image ({err})", file=str(p)) from err
    w, h = im.size
    scale = 1.0
    if max_pixels and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
    if max_side and max(w, h) * scale > max_side:
        scale = max_side / max(w, h)
    if scale < 1.0:
        im = im.resize((max(28, int(w * scale)), max(28, int(h * scale))), Image.Resampling.BICUBIC)
    return im


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_data_url(image: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL (lossless: the pixels stay exactly as given)."""
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode("ascii")
