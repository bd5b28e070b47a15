"""llm-router: one OpenAI-compatible endpoint for many users and many LLM servers."""

__version__ = "0.1.0"
