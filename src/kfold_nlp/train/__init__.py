"""One fold's training: the runtime (devices, precision, threads, memory), the loop, snapshots, selection."""
