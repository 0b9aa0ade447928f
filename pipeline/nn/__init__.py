"""The model: the network and its equations, and the compiled kernels of the original recipe."""
