"""What a batch of completions looks like, as numbers: how a collapsed policy shows itself.

    stats = completion_stats(token_counts=[3, 0, 4], max_tokens=4)
    # {"meanCompletionLength": 2.33, "emptyFraction": 0.33, "truncatedFraction": 0.33}

A completion is *empty* when it has no token (or only whitespace), *truncated* when it used every
token it was allowed without ending on its own (no EOS). A reward model that prefers empty or
endless answers drives one of these to 1 while the reward still rises: reward hacking.
"""

from __future__ import annotations


def completion_stats(token_counts: list[int], max_tokens: int, texts: list[str] | None = None) -> dict[str, float]:
    """Mean length in tokens, and the shares of empty and of truncated completions."""
    if not token_counts:
        return {}
    n = len(token_counts)
    empty = [c == 0 or (texts is not None and not texts[i].strip()) for i, c in enumerate(token_counts)]
    return {
        "meanCompletionLength": sum(token_counts) / n,
        "emptyFraction": sum(empty) / n,
        "truncatedFraction": sum(c >= max_tokens for c in token_counts) / n,
    }
