"""Every LLM call of autointerp goes through a `Judge` from this package.

One protocol for every backend (llama.cpp in process, vLLM, any OpenAI-compatible server, scripted
answers in tests) is what lets retries, the response cache, request ordering and token accounting be
written once, and lets every scorer run against any of them.
"""

from autointerp.llm.base import Judge, JudgeError, Message, Reply, TokenLogprob

__all__ = ["Judge", "JudgeError", "Message", "Reply", "TokenLogprob"]
