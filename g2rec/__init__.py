"""g2rec: the pure algorithm library (numpy / torch only; no Kafka, Feast, SQL or HTTP)."""

__version__ = "0.1.0"
