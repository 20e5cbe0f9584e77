"""Media -> encoder features: decoding, encoding and the feature cache, shared by every consumer."""
