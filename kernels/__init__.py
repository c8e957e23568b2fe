"""The CUDA C++ sources of gpubp (installed as package data `gpubp.kernels`)."""
