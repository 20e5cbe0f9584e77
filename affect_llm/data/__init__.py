"""Data: the manifest schema, media decoding, the data check, dataset adapters and the feature cache.

Only the manifest is re-exported here; media decoding and the cache import heavy packages
(decord, OpenCV, torch) and are imported from their own modules.
"""

from affect_llm.data.manifest import (
    ManifestError,
    ManifestRow,
    load_manifest,
    manifest_sha256,
    write_manifest,
)

__all__ = ["ManifestError", "ManifestRow", "load_manifest", "manifest_sha256", "write_manifest"]
