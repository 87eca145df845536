"""`autointerp serve`: an HTTP service that explains and scores latents of the run folders under one directory.

- `paths.py`: request names (runs, report files) to files, nothing outside the served directory reachable;
- `auth.py`: API keys, kept as digests and compared in constant time;
- `jobs.py`: the persisted job table (SQLite): idempotency keys, restart-resume, a bounded queue;
- `queue.py`: the workers that run queued jobs, and the waits and progress events clients follow;
- `runs.py`: the served runs, each opened once, and what a job does to one (through
  `stages.latent_stages.score_label` and `explain_latent`, the pipeline's own writers);
- `http.py`: the FastAPI routes; `command.py`: the command line.

Nothing here imports FastAPI at import time except `http.py`, so the CLI's parser needs no extra installed.
"""
