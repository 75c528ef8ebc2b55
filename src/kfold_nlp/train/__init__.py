"""One fold's training: the machine (hardware, precision, threads, memory, seeds), the loop, snapshots, selection."""
