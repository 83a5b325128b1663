"""The benchmark's tasks: varied kinds (maths, code, science, writing), fixed so runs compare."""

from __future__ import annotations

from typing import Any

TASKS: tuple[str, ...] = (
    "A train covers 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed?",
    "Write a Python function that returns the longest palindromic substring of a string, with tests.",
    "Explain why the sky is blue, then why sunsets are red, for a curious twelve-year-old.",
    "Find all integer solutions of x^2 - y^2 = 45.",
    "Review this SQL for injection risks and fix it: query = \"SELECT * FROM users WHERE name = '\" + name + \"'\"",
    "Summarise the causes of the 2008 financial crisis in five bullet points.",
    "Design a rate limiter for an HTTP API serving 10,000 clients; compare token bucket and sliding window.",
    "What is the probability that two dice sum to 8, and to at least 8?",
    "Translate 'The early bird catches the worm' into French, German and Spanish, and explain each idiom.",
    "Prove that the square root of 2 is irrational.",
    "Write a regular expression that matches ISO 8601 dates (YYYY-MM-DD) and explain each part.",
    "Which is larger, 2^100 or 10^30? Show the reasoning.",
    "Draft a polite email declining a meeting and proposing two alternative times.",
    "Explain the difference between TCP and UDP and when to use each, with two examples apiece.",
    "A rectangle has perimeter 36 cm and area 80 cm^2. Find its sides.",
    "Write a bash one-liner that lists the ten largest files under the current directory.",
    "Give three arguments for and three against a four-day working week, then a balanced conclusion.",
    "What is the derivative of x^x? Derive it step by step.",
    "Implement binary search in Rust and state its time complexity with a short proof.",
    "Plan a three-day itinerary for Kyoto for someone who likes gardens and food.",
)

# Figure 3's DAG (bench.parallel, bench.lean): four independent steps, then one that sees them all
PARALLEL_DAG: dict[str, Any] = {"steps": [
    {"worker": "strong", "instruction": "Estimate from the population and piano ownership.", "access": "none"},
    {"worker": "coder", "instruction": "Estimate from the number of music schools and venues.", "access": "none"},
    {"worker": "cheap", "instruction": "Estimate from tuning frequency and a tuner's workload.", "access": "none"},
    {"worker": "coder", "instruction": "List the assumptions most likely to be wrong.", "access": "none"},
    {"worker": "strong", "instruction": "Reconcile the estimates and give one final number.", "access": "all"},
]}
