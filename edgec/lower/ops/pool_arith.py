"""(being written)"""

LOWERINGS: dict = {}
