"""The metadata index: derived data about repositories, tags and manifests (storage stays the source of truth)."""
