"""Every LLM call of autointerp goes through a `Judge` from this package."""

from autointerp.llm.base import Judge, JudgeError, Message, Reply, TokenLogprob

__all__ = ["Judge", "JudgeError", "Message", "Reply", "TokenLogprob"]
