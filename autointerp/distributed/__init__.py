"""A run spread over a Ray cluster (`autointerp run --ray [ADDRESS]`).

The single-machine pipeline stays the unit of work: a shard is an ordinary run over a subset of the
latents, with its own logs in the run folder (`shards/`), which every machine of the cluster must
share (a local folder for a cluster on one machine, a network folder otherwise), or which the machines
exchange through object storage (`--ray-storage URL`, storage.py). The driver merges
the shards' logs into the run's own, exactly once, so results, resume, report and publish read a Ray
run as any other. Ray itself is an optional extra (`pip install "autointerp[ray]"`): nothing here
imports it until a run asks for it.
"""
