"""The queue: manifests, state, the scheduler and its workers."""
