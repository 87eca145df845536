"""The stages of a run on one machine, one module per job; `api.Run` runs them here or on Ray.

- `subject_loading.py`: the subject model, tokenizer and dictionaries a run names, located and loaded;
- `cache_stage.py`: the activation caches built from the corpus (all of it, or one shard's rows);
- `open_run.py`: a run folder opened for its latents (caches, samplers, scorers and their context);
- `latent_stages.py`: explaining and scoring the selected latents, or one latent for the service.
"""
