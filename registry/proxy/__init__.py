"""Pull-through cache of upstream registries (registry/proxy/cache.py says how it works)."""
