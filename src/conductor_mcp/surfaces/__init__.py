"""The surfaces: each turns its protocol (MCP, OpenAI's chat API, the web view, the command line) into
calls on the RunManager and renders what it answers; none decides anything of its own."""
