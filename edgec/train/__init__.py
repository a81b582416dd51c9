"""On-device fine-tuning of adapter tensors (issue 6): so far the DP-SGD privacy accounting (privacy.py)."""
