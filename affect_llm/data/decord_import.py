"""decord, imported only after OpenCV.

decord ships its own zlib; once it is loaded first, OpenCV reads no PNG ("libpng error: bad
parameters to zlib") and every still image after the first video of a process fails to decode.
Every decord import in the package goes through :func:`decord_module`, so no entry point (``data
check``, training, ``explain``, chat, the server) depends on having imported OpenCV itself.
"""

from __future__ import annotations

import contextlib
from types import ModuleType


def decord_module() -> ModuleType:
    """The ``decord`` module, with OpenCV (when installed) loaded before it."""
    with contextlib.suppress(ImportError):
        import cv2  # noqa: F401
    import decord

    return decord

