"""The top-k teacher cache on disk: format (store), identity (spec), writers (runner, vllm)."""
