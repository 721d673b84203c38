"""The verification harness: named database states, invariants, digests and the rehearsal battery."""
