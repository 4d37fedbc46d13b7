"""Registry semantics over a storage backend: blobs, uploads, manifests, tags, referrers, repositories.

Plain async Python: nothing here knows about HTTP.
"""
