"""The harness's own process: scenario loading, stage launching, sampling, the run directory."""
