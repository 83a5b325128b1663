"""mcp-conductor: a small conductor model plans workflows that a team of worker LLMs carries out."""

__version__ = "0.1.0"
