"""`autointerp serve`: an HTTP service that explains and scores latents of the run folders under one directory.

- `paths.py`: request names (runs, report files) to files, nothing outside the served directory reachable;
- `auth.py`: API keys, kept as digests and compared in constant time;
- `jobs.py`: the persisted job table (SQLite): idempotency keys, restart-resume, a bounded queue;
- `queue.py`: the workers that run queued jobs, and the waits and progress events clients follow;
- `runs.py`: the served runs, each opened once, and what a job does to one (through
  `stages.latent_stages.score_label` and `explain_latent`, the pipeline's own writers);
- `service.py`: the one object the routes work on (the runs, the job table and queue, the settings);
- `routes.py`: the routes, in three FastAPI routers (the service, the runs, the jobs) over that object;
- `errors.py`: errors answered as JSON; `guard.py`: the body limit and the headers of every answer;
- `http.py`: the app made of those, and `serve` (uvicorn); `command.py`: the command line.

Nothing here imports FastAPI at import time except those four, which `command.py` imports only once the
service is to run, so the CLI's parser needs no extra installed.
"""
