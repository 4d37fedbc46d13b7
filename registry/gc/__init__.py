"""Online garbage collection, upload purging, retention, immutable tags, repository deletion, storage accounting."""
