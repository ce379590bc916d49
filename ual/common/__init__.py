"""Shared plumbing every stage stands on: errors, file I/O, configs, manifests, model loading, prompt formatting,
padding, the API client and resource probes. Nothing here knows about a stage."""
