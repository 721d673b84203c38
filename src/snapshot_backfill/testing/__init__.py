"""The verification harness: named states, invariants, digests and the rehearsal battery."""
