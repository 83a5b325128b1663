"""Ids of runs and evals."""

from __future__ import annotations

import secrets


def new_run_id() -> str:
    return secrets.token_hex(12)  # 96 random bits: unguessable, and never starts with "-" on a CLI
