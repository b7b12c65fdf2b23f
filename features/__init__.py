"""The Feast feature store: definitions, publishing, lookups and the stream sink (see README.md)."""
