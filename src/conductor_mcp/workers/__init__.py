"""The workers: the registry a manifest builds, the pool that calls them (litellm, an in-process GGUF, the
python sandbox), and the model hub."""
