"""Imported by local mode's fork server only (warm.py): importing it loads the stages' libraries."""

from .warm import preload

NOT_WARM = preload()  # None when the server's forks may run stages warm, else why they run cold
