"""autointerp: explain and score the latents of sparse autoencoders with LLM judges."""

__version__ = "0.1.0"
