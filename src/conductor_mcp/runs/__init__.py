"""The door to runs and what is behind it: RunManager, the request's checks, the engine that carries a
workflow out, budgets, retries, learned outcomes and recipes."""
