"""Dev tools: the local cluster (`shoal dev`), the simulated cluster and runtimes, free ports.

The daemon never imports this package (an import-linter contract says so)."""
