"""Linear heads on cached rows: features, the full-network embedding, heads, selection, fit, predict, export."""
