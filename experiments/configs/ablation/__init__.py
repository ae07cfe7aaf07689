"""The variants ablation: its study (`study.py`) and one train config per model."""
