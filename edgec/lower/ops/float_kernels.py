"""(being written) float32 kernels for --precision float32."""

LOWERINGS: dict = {}
