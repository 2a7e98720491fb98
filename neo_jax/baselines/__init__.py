"""Reference systems NEO is compared with (popularity, BM25, dense retrieval, SASRec, TIGER), their
registry and their shared training helper."""
