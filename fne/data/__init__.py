"""Where images come from: dataset forms, the manifest of content keys, shards, splits."""
