"""Keeping a cache folder within a size: the files used longest ago go first."""
import os
from typing import Tuple


def folder_size(directory: str) -> Tuple[int, int]:
    """(bytes, files) under ``directory``; (0, 0) when it does not exist."""
    total = count = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
                count += 1
            except OSError:
                pass
    return total, count


def trim(directory: str, max_bytes: int, suffix: str = ".npy") -> Tuple[int, int]:
    """Remove the least recently used ``*suffix`` files under ``directory`` until the folder holds at most
    ``max_bytes`` of them. Returns (files removed, bytes freed). ``max_bytes <= 0``: no limit."""
    if max_bytes <= 0 or not os.path.isdir(directory):
        return 0, 0
    entries = []
    for root, _, files in os.walk(directory):
        for name in files:
            if not name.endswith(suffix):
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = freed = 0
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        try:
            os.remove(path)
        except OSError:
            continue
        total -= size
        removed += 1
        freed += size
    return removed, freed
