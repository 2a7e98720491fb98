"""Item embeddings and semantic IDs: text and collaborative encoders, residual k-means, the SID
map and its quality report."""
