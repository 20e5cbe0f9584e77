"""Data: the manifest schema, media decoding, the data check, dataset adapters, sample sets.

Only the manifest is re-exported here; media decoding imports heavy packages (decord, OpenCV) and
is imported from its own module.
"""

from affect_llm.data.manifest import ManifestError, ManifestRow, load_manifest, write_manifest

__all__ = ["ManifestError", "ManifestRow", "load_manifest", "write_manifest"]
