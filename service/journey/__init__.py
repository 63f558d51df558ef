"""journey: live customer-journey stages, churn risk and pain points from Kafka touchpoints."""

__version__ = "0.1.0"
