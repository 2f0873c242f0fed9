"""The training engine (one step loop, one evaluation loop), the epoch loop ``fit`` and stopping on a signal."""
