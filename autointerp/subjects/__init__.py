"""The subject model and the dictionary read from it (see `model`, `dictionaries`, `hookpoints`).

Everything that knows a transformer's layout or a dictionary's file format lives here, behind the
`Encoder` and `Hookpoint` interfaces, so caching and steering work the same for every format and
nothing outside this package needs to know where a residual stream is.
"""
