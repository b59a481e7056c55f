"""How a file becomes RGB: the one decoding rule both backends follow.

``load_rgb`` gives the photo as a person sees it (EXIF orientation applied), 16-bit samples
scaled to 8 bits as ``round(v * 255 / 65535)``, float samples taken as [0, 1], alpha dropped
(not composited), every other mode (grayscale, palette, CMYK, 1-bit) converted by PIL. That is
what DALI's image decoder does with the files it reads; the torchvision backend applies it
with PIL. Real ImageNet holds grayscale JPEGs, CMYK JPEGs and a PNG named ``.JPEG``; all
are valid and decode to RGB. ``sniff`` names a file's format from its first bytes.
"""

from __future__ import annotations

import numpy as np


def sniff(head: bytes) -> str | None:
    """The image format named by a file's first bytes (jpeg, png, bmp, webp, tiff, pnm, gif), or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"PF", b"Pf"):  # PF, Pf: float PFM
        return "pnm"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def to_rgb(im):
    """The RGB image (PIL, uint8) of a PIL image of any mode, by the rule of the module docstring.

    16-bit samples (modes ``I;16*``, and ``I`` as 16-bit PNG/PNM files open) become
    ``round(v * 255 / 65535)``, float samples (``F``) ``round(clip(v, 0, 1) * 255)``: what
    DALI's decoder (nvImageCodec) makes of such files, measured. PIL's own ``convert`` clips
    instead of scaling (a 16-bit photo turns white). Alpha is dropped, as ``convert`` and DALI
    both do; palette (transparent entry or not), CMYK, 1-bit and the rest go through ``convert``.
    """
    from PIL import Image

    if im.mode == "F":
        a = np.floor(np.clip(np.asarray(im, dtype=np.float32), 0, 1) * np.float32(255) + np.float32(0.5))
        im = Image.fromarray(a.astype(np.uint8), "L")
    elif im.mode == "I" or im.mode.startswith("I;16"):
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    return im.convert("RGB")


def load_rgb(path: str | bytes):
    """Decode ``path`` (a file, or an image's bytes: a tar shard's member) to an RGB PIL image the way
    a person sees it: EXIF orientation applied (``ImageOps.exif_transpose``, as DALI's decoder does by
    default), then ``to_rgb``. Raises whatever PIL raises for a file it cannot read."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
        ImageOps.exif_transpose(im, in_place=True)
        return to_rgb(im)
