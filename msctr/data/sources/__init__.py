"""Dataset adapters: each turns raw files into a canonical `SourceTable`."""
