"""Raw data -> shards -> batches: sources and the IDX format, the shard set, prepare, the loader."""
