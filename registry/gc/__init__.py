"""Online garbage collection: retention and the removal of what nothing references, on a schedule or on demand."""
