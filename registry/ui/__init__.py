"""The web UI: server-rendered pages over the same store, index and access rules as the API (`/ui/`)."""
