"""alto/policy package."""
