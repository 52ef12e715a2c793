"""The job model: manifests, job specs, states, events and how events change the state. Knows nothing of workers."""
