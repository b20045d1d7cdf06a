"""
The kernel side of the edge: eBPF programs and maps (L{spectrum.kernel.shield}).
"""
