"""alto/executor package."""
