"""Exporting a finished model: its files and model card (`bundle.py`, `card.py`) and where they go
(`publish.py`: a folder, `s3://`, `hf://`)."""
