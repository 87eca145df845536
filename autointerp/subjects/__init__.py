"""The subject model and the dictionary read from it (see `model`, `dictionaries`, `hookpoints`)."""
