"""The teacher cache on disk (top-k or hidden-state rows): keys, format (store), head, identity (spec), writers (runner, vllm).

Below train/: nothing here imports csdistill.train."""
