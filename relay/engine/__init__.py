"""The engine: intake, the scheduler, the dispatcher and its bundler, jobs, events, metrics. Below it: the store
and the channels; above it: the edges and operations."""
