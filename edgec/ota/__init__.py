"""OTA adapter patches: the byte format (format.py), Ed25519 keys (keys.py) and patch creation (patch.py)."""
