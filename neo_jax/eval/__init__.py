"""Measurement only: ranking metrics, the split and validation protocols, steerability,
understanding and faithfulness scorers, the report."""
