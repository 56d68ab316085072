"""The benchmark: `make bench` (bench/README.md)."""
