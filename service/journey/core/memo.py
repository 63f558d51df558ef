"""Bounded memos: a dict of values worked out once, which starts over when it is full, so a
stream of ever new keys costs the work again, never unbounded memory."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, most: int) -> V:
    """Keep ``value`` under ``key`` (emptying ``memo`` first if it holds ``most``); returns it."""
    if len(memo) >= most:
        memo.clear()
    memo[key] = value
    return value
