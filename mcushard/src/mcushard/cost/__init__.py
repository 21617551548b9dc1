"""Cost model: compute, memory, collectives, simulation, traces."""
