"""What the tests share besides fixtures: fakes that speak a real protocol (Hub, S3, an OpenAI-compatible
server), planted latents and scripted judges, and the scripts tests start as processes. Imported as
`helpers.<module>`: tests/conftest.py puts tests/ on sys.path for every test folder, and the Ray workers
that tests start get tests/ on their PYTHONPATH."""
